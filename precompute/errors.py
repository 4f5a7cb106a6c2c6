"""The one error type for problems a user can cause and fix."""


class Task2VecError(Exception):
    """Bad input, missing data or missing weights: carries a one-line, readable message.

    The CLI turns it into exit code 2 and that line; the app into an ``st.error``.
    """
