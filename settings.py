"""Settings of the example deployment: the chat application on the embedded defaults.

Every setting has a declared default (see `lexiconsd settings --reference`);
this file names only what it changes. Environment variables LEXICONS_<NAME>
override it.
"""

APP = "examples.chat"                 # the chat: open http://127.0.0.1:5000/
DATA_DIR = "data"
LOCK_FILE = "run/lexiconsd.pid"
CONTROL_SOCKET = "run/lexiconsd.sock"
LOG_PATH = "run/lexiconsd.log"
