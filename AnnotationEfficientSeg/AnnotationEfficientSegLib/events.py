"""A job's progress as the panel shows it: the core's ``aeseg.engine.progress`` (standard
library only, so importing it needs no core requirement), which ``aeseg status`` prints too."""

from aeseg.engine.progress import (  # noqa: F401
    CANCELLED, DONE, ERROR, EVENTS_FILE, FINISHED, IDLE, RUNNING, EventTail, JobWatcher, ProgressState,
    format_duration, read_job_state,
)
