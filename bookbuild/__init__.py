"""The book's build tooling: execute the chapters (papermill), validate them (nbval), build the
HTML (Jupyter Book 1) with its landing page and error reports. Nothing in :mod:`wmbook` imports
it; it imports :mod:`wmbook` for the chapters' profiles, the stamp and atomic files."""
