"""lis: the Leakage Impact Score evaluator and everything about data.

Schemas and loaders, the simulated platform, preference-pair builders, rankers, similarity
features, metrics (AUC, GAUC, bootstrap), LIS / AIS / efficiency, reports and the CLI.
It never imports transformers, peft or ``align``: a data team runs it on logs alone.
"""
__version__ = "0.1.0"
