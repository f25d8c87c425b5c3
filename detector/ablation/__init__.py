"""Loss ablations: plan the runs (``plan``), train them here (``launch``) or through SLURM
(``slurm``), keep their records (``record``), report paired comparisons (``report``); the CLI is
``tools/ablate.py``."""
