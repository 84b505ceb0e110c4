"""taskman's service layer: everything the front ends, the worker and the scheduler share.

Nothing in this package imports Textual, Rich or the ``tui`` package; a test checks it.
"""
