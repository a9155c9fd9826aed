"""Whole-slide glomerulus segmentation for the HuBMAP "Hacking the Kidney" setting.

Every stage is a module with one job and a ``python -m pipeline <stage>`` command;
see ``../shared/ARCHITECTURE.md`` (mirrored in README.md) for the data flow.
"""

__version__ = "0.1.0"
