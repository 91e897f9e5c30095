"""dbrev's development tooling, outside the installed package (the wheel and the image carry only
``dbrev``): ``envtest`` (the control plane, the one-node cluster, the images), ``demo`` (``make demo``)
and ``docs`` (the generated documentation and examples).

Importable from a checkout after ``make setup``: the editable install puts ``operator/`` on
``sys.path``, and pytest's ``pythonpath`` does too.
"""
