"""The hpm web demo, as the Hugging Face Space runs it (this is its ``app_file``) and as ``python app.py`` serves
it on http://127.0.0.1:7860. The app is :mod:`hpm.webapp`; pip users start it with ``hpm app``."""
from hpm.webapp import LAUNCH, app

if __name__ == "__main__":
    app.launch(**LAUNCH)
