"""taskman's front ends for people: the command line (``tui.cli``) and the Textual console."""
