"""Example applications served by lexicons (``APP = "examples.chat"``)."""
