"""Reading a run's log.jsonl, shared by the trainer (resume) and the plots."""
import json
import os


def log_records(path: str):
    """(line, record) of every complete record of a log; none for a missing log (a torn last line,
    from a killed run, is skipped)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        for line in f:
            try:
                yield line, json.loads(line)
            except json.JSONDecodeError:
                continue
