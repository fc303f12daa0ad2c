"""The error a user can fix: main.py prints its message as one line, with no traceback."""


class UserError(Exception):
  """Bad input, or a state of the machine or workdir the user can change; the message says how."""
