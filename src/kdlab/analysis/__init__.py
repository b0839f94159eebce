"""Representation analysis: what each KD method, at each strength, transfers to the student.

``extract``   finished runs -> one representation file per run (``kdlab extract``)
``store``     the representation file format (atomic .npz)
``metrics``   pure metric functions on arrays (CKA, spectrum, ICA, Fisher, TwoNN, RSA, ...)
``compute``   per-model and per-pair metric tasks with an on-disk cache
``workers``   the worker pool those tasks and the figures run in
``tables``    accuracy table from the long metrics frame
``figures``   matplotlib figures per data set, one module per kind (figures/)
``report``    report.html linking every table and figure
``analyze``   the ``kdlab analyze`` pass tying them together
Paths of the analysis folder come from :mod:`kdlab.run.layout`.
"""
