"""Reading Parquet tables so that no Python object reaches pyarrow's threads.

``pandas.read_parquet(path)`` on a local path opens the file with Python's ``open`` and gives pyarrow
the Python file object. pyarrow then reads ahead on its I/O threads into buffers that wrap Python
objects, and may release the last of them on an I/O thread after the read returned. If that happens
while the interpreter exits, the thread cannot take the GIL, Python ends it, and the C++ runtime aborts
the whole process (``terminate called without an active exception``, exit status -6) after every
output was written (apache/arrow#34314; seen in a batch client that had consolidated a run's parts:
a core dump showed ``arrow::py::PyBuffer::~PyBuffer`` on an Arrow I/O thread inside
``PyGILState_Ensure`` during ``Py_FinalizeEx``). Here pyarrow gets the path and its own local
filesystem, so its buffers are its own, and reads without read-ahead, so no I/O thread holds anything
after the call returns. The table pandas builds is the same.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """``pandas.read_parquet`` of a local file, read by pyarrow's own filesystem on the calling thread.

    Parameters
    ----------
    path : str or Path
        A local Parquet file.
    columns : list of str, optional
        Only these columns.

    Returns
    -------
    pandas.DataFrame
        The table, as ``pandas.read_parquet(path, columns=columns)`` gives it.
    """
    from pyarrow import fs

    return pd.read_parquet(os.path.abspath(path), columns=columns, filesystem=fs.LocalFileSystem(),
                           pre_buffer=False)
