"""What a run is: its settings (TrainConfig), the facts validation reads without torch
(data sets, models, methods, backends), RunSpec <-> paths, the state files and the errors
every layer raises. Imports nothing else of kdlab."""
