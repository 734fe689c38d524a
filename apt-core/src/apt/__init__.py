"""APT: train and serve transformer language models assembled from plugin providers.

Importing ``apt`` is cheap on purpose (no torch): the CLI's listing commands and the
registry must start fast. Heavy modules (model, trainer) are imported where used.
"""

__version__ = "2.0.0"
