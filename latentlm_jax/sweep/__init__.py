"""Sweeps: a family of training runs from one sweep file, their results table, fits and plots.

``points`` expands a sweep file into points (base config + overrides), ``runner`` trains them in
turn as ``latentlm train`` subprocesses (or prints their commands), ``results`` reads their
workdirs into ``sweep.csv``, ``fit`` fits power laws with numpy, ``plot`` draws loss against
compute. Nothing here knows a model family: any config that ``latentlm train`` runs is a base.
"""
