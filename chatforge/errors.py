"""The one exception type users see: the CLI prints its message and exits 2, without a traceback."""


class ChatforgeError(Exception):
    """A problem with the user's input (file, config, model folder), with a message that says what to do."""


def where(path, line=None, field=None) -> str:
    """Format 'FILE:LINE: field F' for error messages."""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if field is not None:
        text += f": field '{field}'"
    return text
