"""Experiments as a product: sweep specs (:mod:`.spec`), running them (:mod:`.sweep`), the SQLite results store
(:mod:`.store`) and paper-style reports (:mod:`.report`). Submodules import the heavy parts lazily."""
