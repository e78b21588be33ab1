"""pyllm/progress.py, the one progress display of quantize, pull and perplexity: silent when
stderr is not a terminal (logs and pipes stay clean), one line per step in `lines` mode
(perplexity's running value, llama-perplexity's log), a bar redrawn in place otherwise."""
from pyllm.progress import Progress


def test_silent_when_not_enabled(capsys):
    p = Progress(10, "writing", enabled=False)
    p.update(5, "blk.0.attn_q.weight")
    p.close()
    assert capsys.readouterr().err == ""


def test_lines_mode_writes_one_line_per_step(capsys):
    p = Progress(3, "perplexity", enabled=False, lines=True)
    for i, v in enumerate((30.1, 29.9, 29.8)):
        p.update(i + 1, f"{v:.4f}")
    p.close()
    assert capsys.readouterr().err == "[1/3] 30.1000\n[2/3] 29.9000\n[3/3] 29.8000\n"


def test_bar_is_redrawn_in_place_and_closed_with_a_newline(capsys):
    with Progress(200_000_000, "pyllm: extracting", enabled=True, unit=(1e6, "MB")) as p:
        p.update(100_000_000)
    err = capsys.readouterr().err
    first, done = err.split("\r")[1:3]
    assert first.startswith("pyllm: extracting [" + "#" * 15 + " " * 15 + "]  50.0% (100/200 MB)")
    assert done.startswith("pyllm: extracting done in ") and err.endswith("\n") and err.count("\n") == 1
