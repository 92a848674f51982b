"""The printed LVIS table and the plots."""
import numpy as np

from ltseg.evaluation import format_table
from ltseg.evaluation.report import plot_bins, plot_per_category


def test_format_table_rows_percentages_and_sentinels():
    m = {"AP": 0.25, "AP50": 0.5, "AP75": 0.2, "APs": -1, "APm": 0.1, "APl": 0.3, "APr": 0.05,
         "APc": 0.2, "APf": 0.4, "AR@300": 0.6, "ARs@300": -1, "ARm@300": 0.5, "ARl@300": 0.7,
         "AP1": 0.1, "AP2": -1, "AP3": 0.3, "AP4": 0.4}
    text = format_table({"segm": m})
    lines = text.splitlines()
    assert lines[0] == "== segm =="
    assert "IoU=0.50:0.95 | area=   all | cats=all ] =  25.00" in lines[1]
    assert "area= small | cats=all ] =     -1" in lines[4]
    assert "cats=  r ] =   5.00" in lines[7]
    assert "maxDets=300 ] =  60.00" in lines[10]
    assert lines[-1] == " Instance-count bins: AP1= 10.00  AP2=    -1  AP3= 30.00  AP4= 40.00"


def test_plots_are_written(tmp_path):
    table = {"AP": np.array([0.1, -1, 0.5, 0.3]), "train_instance_count": np.array([3, 40, 500, 5000]),
             "frequency": np.array(["r", "c", "f", "f"])}
    edges = np.array([0, 10, 100, 1000, np.inf])
    assert plot_per_category(table, edges, tmp_path / "a.png")
    assert plot_bins({"bbox": {"AP1": 0.1, "AP2": -1, "AP3": 0.5, "AP4": 0.3}}, edges, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "b.png").stat().st_size > 1000
