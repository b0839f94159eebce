"""Operations on a study's runs for the people behind it: progress figures (``plot``), a
weekly summary (``digest``), closing a round (``archive``), the methodology section
(``methodology``), cluster automation from cron (``sync``), the end-to-end ``demo``
and published teachers as a study's teacher runs (``import_teacher``).

Each module has ``command(args) -> exit code`` for the CLI and one plain function that
does the work, for tests and for the other commands.
"""
