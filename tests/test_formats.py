"""Data formats: strict .pts parsing, 300W folders, CelebA lists, Caffe HDF5 files."""
from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from landmarknet.data import formats as F
from landmarknet.data.formats import PtsError, ListFileError, Sample
from landmarknet.errors import DataError

GOOD_3 = "version: 1\nn_points:  3\n{\n1.000 2.000\n3.500 4.250\n-5.000 6.000\n}\n"


def _pts_text(points: list[tuple[float, float]]) -> str:
    rows = "".join(f"{x:.3f} {y:.3f}\n" for x, y in points)
    return f"version: 1\nn_points:  {len(points)}\n{{\n{rows}}}\n"


# ---------------------------------------------------------------- .pts


def test_write_pts_layout_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.pts"
    F.write_pts(path, np.array([[1, 2], [3.5, 4.25], [-5, 6]]))
    assert path.read_text() == GOOD_3  # the exact layout of the shared data
    pts = F.read_pts(path)
    assert pts.dtype == np.float32
    np.testing.assert_array_equal(pts, [[1, 2], [3.5, 4.25], [-5, 6]])


def test_read_real_pts_file(data_dir: Path) -> None:
    # Values read off the file by eye: first two and last point of this face.
    pts = F.read_pts(data_dir / "ytf68/val/te_Adrian_Nastase_11.pts", n_points=68)
    assert pts.shape == (68, 2)
    np.testing.assert_array_equal(pts[:2], [[33, 64], [33, 71]])
    np.testing.assert_array_equal(pts[-1], [64, 91])


def test_crlf_and_trailing_blank_lines_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "crlf.pts"
    path.write_bytes((GOOD_3 + "\n\n").replace("\n", "\r\n").encode())
    np.testing.assert_array_equal(F.read_pts(path)[1], [3.5, 4.25])


BAD_PTS = {
    "version": ("version: 2\nn_points: 1\n{\n1 2\n}\n", 1, "version: 1"),
    "count_word": ("version: 1\nn_points: two\n{\n1 2\n}\n", 2, "n_points"),
    "brace": ("version: 1\nn_points: 1\n1 2\n}\n", 3, "'{'"),
    "letters": ("version: 1\nn_points: 2\n{\n1 2\n1 y\n}\n", 5, "not a number: 'y'"),
    "three_values": ("version: 1\nn_points: 2\n{\n1 2 3\n1 2\n}\n", 4, "expected 'x y'"),
    "nan": ("version: 1\nn_points: 1\n{\nnan 2\n}\n", 4, "not a finite number"),
    "too_few": ("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n", 6, "after 2 points, header says 3"),
    "too_many": ("version: 1\nn_points: 1\n{\n1 2\n3 4\n}\n", 5, "expected '}' after 1 points"),
    "truncated": ("version: 1\nn_points: 2\n{\n1 2\n", 5, "file ends early"),
    "trailing": (GOOD_3 + "extra\n", 8, "unexpected text"),
}


@pytest.mark.parametrize("case", sorted(BAD_PTS))
def test_malformed_pts_name_file_and_line(tmp_path: Path, case: str) -> None:
    text, line, words = BAD_PTS[case]
    path = tmp_path / f"{case}.pts"
    path.write_text(text)
    with pytest.raises(PtsError) as info:
        F.read_pts(path)
    assert isinstance(info.value, DataError)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert words in str(info.value)


def test_point_count_mismatch_names_header_line(tmp_path: Path) -> None:
    path = tmp_path / "three.pts"
    path.write_text(GOOD_3)
    with pytest.raises(PtsError, match=r"three\.pts:2: has 3 points, expected 68"):
        F.read_pts(path, n_points=68)
    with pytest.raises(PtsError, match="cannot read"):
        F.read_pts(tmp_path / "missing.pts")


# ---------------------------------------------------------------- 300W folders


def test_folder_reader_counts_every_kind_of_bad_sample(tmp_path: Path) -> None:
    img = np.full((40, 50, 3), 128, np.uint8)
    face = [(10.0, 10.0), (20.0, 12.0), (15.0, 30.0)]
    for stem in ("a_good", "b_good", "c_unreadable", "d_malformed", "e_count", "f_far", "g_noimage"):
        (tmp_path / f"{stem}.pts").write_text(_pts_text(face))
        if stem != "g_noimage":
            cv2.imwrite(str(tmp_path / f"{stem}.png"), img)
    (tmp_path / "c_unreadable.png").write_bytes(b"not an image at all")
    (tmp_path / "d_malformed.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n")
    (tmp_path / "e_count.pts").write_text(_pts_text(face[:2]))
    (tmp_path / "f_far.pts").write_text(_pts_text([(10, 10), (20, 12), (15, 95)]))  # 55 px below a 40 px image
    (tmp_path / "z_orphan.png").write_bytes(b"")  # an image without .pts is not a sample

    samples, report = F.read_300w_folder(tmp_path)
    assert [s.image_path.name for s in samples] == ["a_good.png", "b_good.png"]
    assert report.n_found == 7 and report.n_kept == 2 and report.n_bad == 5
    assert report.counts() == {
        F.UNREADABLE_IMAGE: 1, F.MALFORMED_PTS: 1, F.COUNT_MISMATCH: 1, F.OUTSIDE_IMAGE: 1, F.MISSING_IMAGE: 1
    }
    assert "d_malformed.pts:5: file ends early" in report.skipped[F.MALFORMED_PTS][0]
    assert "7 found, 2 kept" in report.summary()
    np.testing.assert_array_equal(samples[0].points, face)
    assert samples[0].box is None


def test_slightly_outside_points_are_kept(tmp_path: Path) -> None:
    # YTF has labels up to 23 px outside ~185 px frames; that is not "far outside".
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((100, 100, 3), np.uint8))
    (tmp_path / "a.pts").write_text(_pts_text([(-20, 50), (50, 119)]))
    samples, report = F.read_300w_folder(tmp_path)
    assert len(samples) == 1 and report.n_bad == 0


@pytest.mark.parametrize(("folder", "count", "n_points"), [("ytf68/val", 343, 68), ("ytf77/val", 338, 77)])
def test_real_folders_read_without_error(data_dir: Path, folder: str, count: int, n_points: int) -> None:
    samples, report = F.read_300w_folder(data_dir / folder)
    assert report.n_bad == 0, report.skipped
    assert len(samples) == count == report.n_found
    assert all(s.points.shape == (n_points, 2) and s.points.dtype == np.float32 for s in samples)
    names = [s.image_path.name for s in samples]
    assert names == sorted(names) and all(n.endswith(".jpg") for n in names)
    # The README: points stray at most 23 px outside the frame.
    assert min(float(s.points.min()) for s in samples) >= -23


def test_samples68_includes_png(data_dir: Path) -> None:
    samples, report = F.read_300w_folder(data_dir / "samples68", n_points=68)
    assert [s.image_path.name for s in samples] == ["breakingbad.jpg", "einstein.jpg", "takeo.png"]
    assert report.n_bad == 0


# ---------------------------------------------------------------- CelebA layout


def test_cuhk5_partitions(data_dir: Path) -> None:
    val, report = F.read_celeba(data_dir / "cuhk5", "val", check_images=True)
    assert len(val) == 584 and report.n_bad == 0
    train, _ = F.read_celeba(data_dir / "cuhk5", 0)
    assert len(train) == 5261
    assert not {s.image_path for s in train} & {s.image_path for s in val}
    everything, _ = F.read_celeba(data_dir / "cuhk5")
    first = everything[0]
    # Line 3 of both lists: 0_0_0.jpg.
    assert first.image_path.name == "0_0_0.jpg"
    np.testing.assert_array_equal(first.points, [[151, 147], [246, 148], [209, 194], [161, 237], [235, 235]])
    assert first.box == (104.0, 95.0, 204.0, 204.0)


def _write_celeba(root: Path, landmark_rows: str, count: int = 2) -> None:
    (root / "img").mkdir()
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    (root / "list_landmarks_celeba.txt").write_text(f"{count}\n{header}\n{landmark_rows}")
    (root / "list_bbox_celeba.txt").write_text(
        "2\nimage_id x_1 y_1 width height\na.jpg 1.5 2 30 30.25\nb.jpg 0 0 10 10\n"
    )
    (root / "list_eval_partition.txt").write_text("a.jpg 0\nb.jpg 2\n")


def test_celeba_parses_floats_and_selects_partitions(tmp_path: Path) -> None:
    _write_celeba(tmp_path, "a.jpg 1.5 2 3 4 5 6 7 8 9 10.125\nb.jpg 1 1 1 1 1 1 1 1 1 1\n")
    test, _ = F.read_celeba(tmp_path, "test")
    assert [s.image_path.name for s in test] == ["b.jpg"]
    train, _ = F.read_celeba(tmp_path, "train")
    np.testing.assert_array_equal(train[0].points, [[1.5, 2], [3, 4], [5, 6], [7, 8], [9, 10.125]])
    assert train[0].box == (1.5, 2.0, 30.0, 30.25)
    missing, report = F.read_celeba(tmp_path, 1, check_images=True)
    assert missing == [] and report.n_found == 0
    _, report = F.read_celeba(tmp_path, None, check_images=True)
    assert report.counts() == {F.MISSING_IMAGE: 2}
    with pytest.raises(ValueError, match="partition"):
        F.read_celeba(tmp_path, "validation")


@pytest.mark.parametrize(
    ("rows", "count", "line", "words"),
    [
        ("a.jpg 1 2 3 4 5 6 7 8 9\nb.jpg 1 1 1 1 1 1 1 1 1 1\n", 2, 3, "a name and 10 numbers"),
        ("a.jpg 1 2 3 4 5 6 7 8 9 10\nb.jpg 1 1 1 1 1 1 1 1 x 1\n", 2, 4, "not a number"),
        ("a.jpg 1 2 3 4 5 6 7 8 9 10\n", 2, 1, "count says 2 rows, found 1"),
        ("a.jpg 1 2 3 4 5 6 7 8 9 10\na.jpg 1 1 1 1 1 1 1 1 1 1\n", 2, 4, "duplicate name"),
    ],
)
def test_celeba_errors_name_file_and_line(tmp_path: Path, rows: str, count: int, line: int, words: str) -> None:
    _write_celeba(tmp_path, rows, count)
    with pytest.raises(ListFileError) as info:
        F.read_celeba(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'list_landmarks_celeba.txt'}:{line}: ")
    assert words in str(info.value)


def test_partition_value_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a.jpg 0\nb.jpg 7\n")
    with pytest.raises(ListFileError, match=r"p\.txt:2: b\.jpg: partition must be 0, 1 or 2"):
        F.read_celeba_partition(path)


# ---------------------------------------------------------------- Caffe HDF5


def test_hdf5_write_list_and_read_back(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((3, 1, 4, 5)).astype(np.float32)
    label = rng.standard_normal((3, 10)).astype(np.float32)
    h5 = F.write_hdf5(tmp_path / "x.h5", data, label)
    with h5py.File(h5, "r") as f:  # checked with h5py itself, as Caffe would see it
        assert f["data"].dtype == np.float32 and f["data"].shape == (3, 1, 4, 5)
        np.testing.assert_array_equal(f["label"][...], label)
    listing = F.write_hdf5_list(tmp_path / "list.txt", [h5])
    assert listing.read_text() == f"{h5.resolve()}\n"
    assert F.read_hdf5_list(listing) == [h5.resolve()]
    d2, l2 = F.load_hdf5(h5)
    np.testing.assert_array_equal(d2, data)
    np.testing.assert_array_equal(l2, label)


def test_hdf5_listing_errors(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("\nmissing.h5\n")
    with pytest.raises(ListFileError, match=r"list\.txt:2: no such file"):
        F.read_hdf5_list(listing)
    with h5py.File(tmp_path / "nolabel.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(DataError, match="'data' and 'label'"):
        F.load_hdf5(tmp_path / "nolabel.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read HDF5"):
        F.load_hdf5(tmp_path / "junk.h5")


def test_pack_hdf5_puts_labels_on_the_marked_pixels(tmp_path: Path) -> None:
    # Each image has white dots exactly at its landmarks; after packing, the label must point at them.
    samples = []
    for k, (x, y) in enumerate([(30, 40), (50, 45), (70, 60)]):
        img = np.zeros((120, 160, 3), np.uint8)
        pts = np.array([[x, y], [x + 40, y], [x + 20, y + 40]], np.float32)
        for px, py in pts.astype(int):
            img[py - 1 : py + 2, px - 1 : px + 2] = 255
        cv2.imwrite(str(tmp_path / f"{k}.png"), img)
        samples.append(Sample(tmp_path / f"{k}.png", pts, box=(x - 5.0, y - 5.0, 50.0, 50.0) if k else None))
    listing = F.pack_hdf5(samples, tmp_path / "out", size=60, pad=0.2, per_file=2)
    files = F.read_hdf5_list(listing)
    assert [f.name for f in files] == ["part_0000.h5", "part_0001.h5"]
    data = np.concatenate([F.load_hdf5(f)[0] for f in files])
    label = np.concatenate([F.load_hdf5(f)[1] for f in files])
    assert data.shape == (3, 3, 60, 60) and label.shape == (3, 6)
    assert 0.9 < data.max() <= 1.0 and data.min() == 0.0  # scaled by 1/255
    for face, lab in zip(data, label):
        for lx, ly in lab.reshape(3, 2) * 60:
            x, y = int(round(lx)), int(round(ly))
            assert face[0, y, x] > 0.5, (lx, ly)  # the dot is under the label


def test_sample_validates_points() -> None:
    s = Sample("a.jpg", [[1, 2], [3, 4]], box=(1, 2, 3, 4))
    assert s.points.dtype == np.float32 and isinstance(s.image_path, Path) and s.box == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        Sample("a.jpg", np.zeros((3, 3)))
