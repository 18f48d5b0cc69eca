"""Column names shared by the readers, the steps and the writers.

Every batch that flows through the pipeline carries the document columns (``id``, ``text``,
``source`` and whatever metadata the input had) plus three internal ones: ``_key``, a unique
int64 that orders documents as they were read (file index, then record), and
``_drop_step`` / ``_drop_reason``, null while a document is alive. A dropped document stays
in the stream, untouched by later steps, until the sink writes it under ``rejected/``: that
is how ``input = kept + sum(dropped)`` holds by construction.
"""

ID = "id"
TEXT = "text"
SOURCE = "source"
KEY = "_key"
DROP_STEP = "_drop_step"
DROP_REASON = "_drop_reason"
INTERNAL = (KEY, DROP_STEP, DROP_REASON)

# Rejected documents are written with these two columns in place of the internal ones.
REJECT_STEP = "step"
REJECT_REASON = "reason"
