"""Box-regression losses (``regression``) and the beta schedules of Dynamic Smooth L1
(``dynamic``); each name is imported from its module."""
