"""`python -m <package>`: the process every stage runs in (dvc.yaml), and the tools' command line."""

import gc

from .cli import main

# A stage's process loads torch, MONAI and MLflow: millions of objects that live until it exits.
# Python's cycle collector would walk them again and again while they load, and all of them once
# more at exit: about 1 s and 1.4 s a stage on a 2-core CPU (bench/train.py). So it waits until
# the command has loaded (cli.resume_collector), and at exit whatever is still alive is frozen out
# of its reach, to be freed without the walk.
gc.disable()
try:
    main()
finally:
    gc.freeze()
