"""edgellm's benchmark scripts, run from the repository root as modules: ``python -m bench.<name>``.

Each script measures one experiment and writes ``bench/results/<name>.json`` through
``bench._common.write_result`` (the provenance envelope); ``python -m bench.render`` turns every
result into docs/benchmarks.md. Not part of the installed ``edgellm`` package.
"""
