"""`tunesmith table` cells: rates as percentages, small floats with three decimals, counts grouped."""

from tunesmith.recipes.table import _fmt


def test_cells_keep_the_digits_their_scale_needs():
    assert _fmt("test_loss", 0.8663) == "0.866"  # losses and ROUGE differ in the third digit
    assert _fmt("rouge_l", 0.61674) == "0.617"
    assert _fmt("general_perplexity_after", 55.18) == "55.2"
    assert _fmt("eval_accuracy", 0.87) == "87.0%"
    assert _fmt("trainable_params", 4884480) == "4,884,480"
    assert _fmt("missing", None) == "-"
