"""Run the dmole commands given as one JSON list of argument lists, one after another in this process: under
`accelerate launch` each process runs them all, so consecutive launched stages pay one interpreter start
(tests/test_multiprocess.py). A command that fails stops the rest with its exit status."""

import json
import sys

from dmole.cli.app import app

for args in json.loads(sys.argv[1]):
    status = app(args, standalone_mode=False)  # not standalone, a failure comes back as its status
    if status:
        sys.exit(status)
