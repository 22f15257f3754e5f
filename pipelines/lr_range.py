"""The two LR range tests' defaults, stated once: ``pipelines.lr_finder`` runs with them and the CLI shows them.

A module of constants alone, light to import: the CLI declares its options from it before torch is loaded.
"""

MIN_LR = 1e-4  # first LR of the loss sweep; lowest max LR of the accuracy test
MAX_LR = 10.0  # last LR of the loss sweep (fastai's lr_find ends at 10 too); highest of the accuracy test
NUM_ITER = 100  # training steps of the loss sweep (fastai's default)
MODES = ("exp", "linear")  # log-spaced or evenly spaced LRs
SMOOTH = 0.05  # weight of each new loss in the smoothed curve (fastai: beta 0.98, i.e. 0.02; 0.05 for 100 steps)
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds this many times its minimum (fastai: 4)
ACCURACY_EPOCHS = 5  # epochs of each run of the accuracy test (Smith 2018 uses short runs)
ACCURACY_POINTS = 5  # max LRs tried when none are given: log-spaced from MIN_LR to MAX_LR
