"""A run's files: reading its log.jsonl (the trainer's resume, the plots) and the names of
clever-eval's results (written by evaluate, read by the plots, removed by the trainer)."""
import json
import os

#: The networks clever-eval evaluates.
EVALUATED = ("teacher", "student")
#: The files clever-eval writes for one network, by extension: results, table, plot.
EVAL_EXTENSIONS = (".json", ".md", ".png")


def eval_stem(out: str, which: str) -> str:
    """The path of clever-eval's results for `which`, without the extension."""
    return os.path.join(out, f"eval_{which}")


#: What clever-eval writes in a run's folder.
EVAL_FILES = tuple(eval_stem("", which) + ext for which in EVALUATED for ext in EVAL_EXTENSIONS)


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
