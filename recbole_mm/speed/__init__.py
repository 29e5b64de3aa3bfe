"""Speed report: RecBole's padded path against the plugin's padding-free path, in one process.

    python -m recbole_mm.speed --models=SASRec,SGP4SR --dataset=scientific_mm \\
        --hidden_size=300 --train_batch_size=512 [--json out.json] [--key=value ...]

For every model, the same data and the same overrides are run twice, back to back: once with
``trim_padding: false`` (RecBole's loaders and modules, every history padded to
``MAX_ITEM_LIST_LENGTH``) and once with the defaults (length-bucketed, trimmed batches, fast
dropout). Each prints seconds per training epoch, seconds per full-ranking evaluation pass, real
history tokens against processed positions, and the *floor*: the FLOPs of the real tokens through
a SASRec-shaped encoder plus the full softmax, divided by the matrix-product FLOP/s measured in the
same run; ``--parts`` also times one trimmed epoch by part (forward per sub-module, backward,
optimizer step). Parts: :mod:`.measure` (timing, position counts), :mod:`.floor` (FLOP model,
matmul rate), :mod:`.parts` (time by part), :mod:`.report` (table). Benchmark tooling, never a timed unit test.
"""
