"""``apt tune``: Optuna studies over a profile's ``search:`` section, one ``apt train`` run per trial."""

__version__ = "1.0.0"
