"""Sub-commands of the ``rankguide`` CLI, one module each."""
