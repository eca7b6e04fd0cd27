"""Labels files: read as zoo releases write them, written atomically, used by ImageFolder."""
import numpy as np
import pytest
from PIL import Image

from kindling.runtime.data import ImageFolder, Pipeline, read_labels, write_labels


def test_synset_lines_stay_whole_and_bom_crlf_and_blank_lines_are_taken(tmp_path):
    path = tmp_path / "synset_words.txt"
    path.write_bytes("\ufeffn01440764 tench, Tinca tinca\r\n\r\nn01443537 goldfish, Carassius auratus\r\n  é  \n"
                     .encode("utf-8"))
    assert read_labels(path) == ["n01440764 tench, Tinca tinca", "n01443537 goldfish, Carassius auratus", "é"]


def test_write_then_read_is_the_same_list_and_leaves_no_temp_file(tmp_path):
    labels = ["cat", "dog", "n01440764 tench, Tinca tinca", "café"]
    path = write_labels(tmp_path / "labels.txt", labels)
    assert read_labels(path) == labels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt"]


@pytest.mark.parametrize("text, message", [("cat\ndog\ncat\n", "'cat' appears twice \\(lines 1 and 3\\)"),
                                           ("\n  \n", "has no labels")])
def test_bad_labels_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_labels(path)
    if "twice" in message:  # display names (ImageNet's short names hold "crane" twice) may repeat
        assert read_labels(path, unique=False) == ["cat", "dog", "cat"]
    with pytest.raises(ValueError, match="cannot read"):
        read_labels(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="line breaks"):
        write_labels(tmp_path / "out.txt", ["a\nb"])


def test_a_labels_file_fixes_class_indices_for_an_image_folder(tmp_path):
    for c in ("ant", "bee"):
        (tmp_path / "images" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / c / "0.png")
    labels = write_labels(tmp_path / "labels.txt", ["wasp", "bee", "ant"])
    data = ImageFolder(tmp_path / "images", Pipeline.from_metadata({"input_size": [4, 4]}), labels=read_labels(labels))
    assert data.labels == ["wasp", "bee", "ant"]
    assert {data.source(i).split("/")[-2]: data.label(i) for i in range(len(data))} == {"ant": 2, "bee": 1}


def test_bad_labels_files_are_data_errors_naming_file_and_line(tmp_path):
    from kindling.runtime.errors import DataError
    path = tmp_path / "labels.txt"
    path.write_bytes(b"cat\ndog\nbi\xffrd\n")
    with pytest.raises(DataError, match=rf"^{path}: line 3 is not UTF-8 text \(byte 0xff\)"):
        read_labels(path)
    path.write_bytes(b"cat\ncat\n")
    with pytest.raises(DataError, match="label 'cat' appears twice"):
        read_labels(path)
    assert issubclass(DataError, ValueError)
