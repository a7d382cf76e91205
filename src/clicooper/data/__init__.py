"""Datasets: Fashion-MNIST (Debian IDX files), scikit-learn digits, a user's ``.npz``, CIFAR-10/100 (official
binary version), class-folder images (``imagefolder:``) and CSV tables (``csv:``); see :mod:`.loaders`.

Every training sample's **sample id** is its index in the training split (``x_train``). Ids stay with the
data owner; trainers only ever see tensors. Nothing is downloaded at run time.
"""

from clicooper.data.dataset import Dataset, TrainInputs
from clicooper.data.loaders import load_dataset
from clicooper.data.order import epoch_order, steps_in
from clicooper.data.stream import StreamedImages

__all__ = ["Dataset", "StreamedImages", "TrainInputs", "epoch_order", "load_dataset", "steps_in"]
