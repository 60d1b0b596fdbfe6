"""Pictures as input blobs: landmarknet.preprocess against OpenCV 4.x's cv2.dnn.blobFromImage,
and ``landmarknet forward --image`` end to end (the blob it feeds, detections in picture pixels).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from landmarknet.cli.main import main
from landmarknet.errors import LandmarknetError
from landmarknet.preprocess import ImageGeometry, blob_from_image, blob_from_images, boxes_to_image


def _cases(count: int):
    """Random pictures and blobFromImage arguments: 1, 3 and 4 channels, 8-bit and float,
    up- and down-scaling, crop or not, swapRB or not."""
    rng = np.random.default_rng(7)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(2, 90, 2))
        channels = (1, 3, 4)[i % 3]
        shape = (h, w) if channels == 1 and i % 2 else (h, w, channels)
        if i % 5 == 0:
            image = (rng.random(shape) * 300).astype(np.float32)
        else:
            image = rng.integers(0, 256, shape, dtype=np.uint8)
        size = tuple(int(v) for v in rng.integers(1, 120, 2))
        mean = tuple(float(v) for v in rng.normal(100, 50, 4))
        yield image, float(rng.random() * 2), size, mean, bool(i % 3 == 1), bool(i % 2)


@pytest.mark.parametrize("chunk", range(4))
def test_blob_from_image_equals_opencv_bit_for_bit(chunk):
    cases = list(_cases(400))[chunk * 100:(chunk + 1) * 100]
    for image, scale, size, mean, swap, crop in cases:
        ref = cv2.dnn.blobFromImage(image, scale, size, mean, swap, crop)
        ours = blob_from_image(image, scale=scale, size=size, mean=mean, swap_rb=swap, crop=crop)
        assert ours.dtype == np.float32 and ours.shape == ref.shape, (image.shape, size, crop)
        np.testing.assert_array_equal(ours, ref, err_msg=f"{image.shape} {size} crop={crop}")


def test_one_number_mean_is_every_channel_unlike_opencvs_python_scalar():
    image = np.dstack([np.full((4, 6), v, np.uint8) for v in (200, 100, 50)])
    ours = blob_from_image(image, scale=0.5, size=(3, 2), mean=127.5)
    np.testing.assert_array_equal(ours[0, :, 0, 0], [36.25, -13.75, -38.75])
    # OpenCV's binding makes 127.5 the Scalar (127.5, 0, 0, 0): the first channel only.
    opencv = cv2.dnn.blobFromImage(image, 0.5, (3, 2), 127.5)
    np.testing.assert_array_equal(opencv[0, :, 0, 0], [36.25, 50.0, 25.0])
    np.testing.assert_array_equal(blob_from_image(image, scale=0.5, size=(3, 2),
                                                  mean=(127.5, 0, 0)), opencv)


def test_batch_and_geometry():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    blob, geometry = blob_from_images([a, b], size=(32, 24), crop=True)
    ref = cv2.dnn.blobFromImages([a, b], 1.0, (32, 24), (0, 0, 0), False, True)
    np.testing.assert_array_equal(blob, ref)
    # a: factor max(32/60, 24/40) = 0.6 -> 36 x 24, 2 columns cut on the left.
    assert geometry[0] == ImageGeometry(60, 40, pytest.approx(0.6), pytest.approx(0.6), 2.0,
                                        0.0, 32, 24)
    with pytest.raises(LandmarknetError, match="different shapes"):
        blob_from_images([a, b])
    with pytest.raises(LandmarknetError, match="one number or one per channel"):
        blob_from_image(a, mean=(1, 2))
    with pytest.raises(LandmarknetError, match="expected H x W"):
        blob_from_image(np.zeros((4, 4, 2), np.uint8))


def test_boxes_back_on_the_picture():
    plain = ImageGeometry(200, 100, 0.5, 1.0, 0.0, 0.0, 100, 100)
    cropped = ImageGeometry(200, 100, 1.0, 1.0, 50.0, 0.0, 100, 100)
    rows = np.array([[0, 3, 0.9, 0.1, 0.2, 0.5, 1.0],
                     [1, 3, 0.8, 0.0, 0.0, 1.0, 1.0],
                     [-1, -1, -1, -1, -1, -1, -1]], np.float32)
    out = boxes_to_image(rows, [plain, cropped])
    assert out.shape == (2, 7)  # the no-detection row is dropped
    np.testing.assert_allclose(out[0, 3:], [20, 20, 100, 100], rtol=1e-6)
    np.testing.assert_allclose(out[1, 3:], [50, 0, 150, 100], rtol=1e-6)  # the centre window
    pixels = boxes_to_image(rows[:1] * [1, 1, 1, 100, 100, 100, 100], [plain], normalized=False)
    np.testing.assert_allclose(pixels[0, 3:], [20, 20, 100, 100], rtol=1e-6)
    with pytest.raises(LandmarknetError, match="names image 1"):
        boxes_to_image(rows[1:2], [plain])


NET = """name: "pictures"
input: "data" input_shape { dim: 1 dim: 3 dim: 24 dim: 32 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
"""

# One prior box, zero offsets, class 1 certain: DetectionOutput returns the prior itself.
DETECTOR = """name: "detector"
input: "data" input_shape { dim: 1 dim: 3 dim: 24 dim: 32 }
input: "loc" input_shape { dim: 1 dim: 4 }
input: "conf" input_shape { dim: 1 dim: 2 }
input: "prior" input_shape { dim: 1 dim: 2 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior"
        top: "detection_out"
        detection_output_param { num_classes: 2 share_location: true background_label_id: 0
          nms_param { nms_threshold: 0.45 top_k: 10 } code_type: CENTER_SIZE keep_top_k: 10
          confidence_threshold: 0.1 } }
"""


@pytest.fixture
def picture(tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    path = tmp_path / "picture.png"
    cv2.imwrite(str(path), image)
    return path, image


def test_forward_image_feeds_blob_from_image(tmp_path, picture):
    path, image = picture
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    out = tmp_path / "out.npz"
    assert main(["forward", str(net), "--random-weights", "1", "--image", f"data={path}",
                 "--mean", "104,117,123", "--scale", "0.5", "--swap-rb", "--crop",
                 "--blobs", "data,conv", "--output", str(out)]) == 0
    with np.load(out) as saved:
        ref = cv2.dnn.blobFromImage(image, 0.5, (32, 24), (104, 117, 123), True, True)
        np.testing.assert_array_equal(saved["data"], ref)  # the declared 32 x 24, not 80 x 50
        assert saved["conv"].shape == (1, 2, 22, 30)
    # two pictures make a batch; --size overrides the declared size
    assert main(["forward", str(net), "--random-weights", "1", "--image", str(path),
                 "--image", str(path), "--size", "16,12", "--blobs", "data",
                 "--output", str(out)]) == 0
    with np.load(out) as saved:
        assert saved["data"].shape == (2, 3, 12, 16)


def _detector_args(tmp_path, picture_path) -> list[str]:
    """`forward` of DETECTOR on the picture, its head inputs from .npy files."""
    net = tmp_path / "det.prototxt"
    net.write_text(DETECTOR)
    arrays = {"loc": np.zeros((1, 4), np.float32), "conf": np.array([[0.0, 1.0]], np.float32),
              "prior": np.array([[[0.25, 0.5, 0.75, 1.0], [0.1, 0.1, 0.2, 0.2]]], np.float32)}
    args = ["forward", str(net), "--random-weights", "1", "--image", str(picture_path),
            "--output", str(tmp_path / "o.npz")]
    for name, value in arrays.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp_path / name}.npy"]
    return args


def test_forward_prints_detections_in_picture_pixels(tmp_path, picture, capsys):
    path, _ = picture
    assert main(_detector_args(tmp_path, path)) == 0
    printed = capsys.readouterr().out
    assert "detection_out: 1 detection(s) from layer 'det'" in printed
    # the 80 x 50 picture: (0.25, 0.5, 0.75, 1.0) -> (20, 25, 60, 50)
    row = next(line for line in printed.splitlines() if line.startswith("    0    1"))
    np.testing.assert_allclose([float(v) for v in row.split()[3:]], [20, 25, 60, 50], atol=0.05)


def test_forward_labels_and_draw(tmp_path, picture, capsys):
    path, _ = picture
    args = _detector_args(tmp_path, path)
    label_map = tmp_path / "labelmap.prototxt"
    label_map.write_text('item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
                         'item { name: "face" label: 1 display_name: "Face" }\n')
    out = tmp_path / "drawn.png"
    assert main(args + ["--labels", str(label_map), "--draw", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "   50.0 Face" in printed and f"on {out}" in printed
    drawn = cv2.imread(str(out))
    original = cv2.imread(str(path))
    assert drawn.shape == original.shape
    changed = np.nonzero((drawn != original).any(axis=2))
    # the box (20, 25)-(60, 50) in the 80 x 50 picture, its label above it
    assert changed[1].min() >= 18 and changed[1].max() <= 80 and changed[0].max() <= 50
    assert (drawn[25, 20:60] != original[25, 20:60]).any()
    names = tmp_path / "names.txt"
    names.write_text("background\nperson\n")
    assert main(args + ["--labels", str(names)]) == 0
    assert "   50.0 person" in capsys.readouterr().out
    bad = tmp_path / "bad.prototxt"
    bad.write_text("item { nam: 1 }\n")
    assert main(args + ["--labels", str(bad)]) == 2
    assert f"--labels {bad}:1:" in capsys.readouterr().err


def test_forward_image_errors(tmp_path, picture, capsys):
    path, _ = picture
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    np.save(tmp_path / "d.npy", np.zeros((1, 3, 24, 32), np.float32))
    base = ["forward", str(net), "--random-weights", "1", "--output", str(tmp_path / "o.npz")]
    assert main(base + ["--image", str(path), "--input", f"data={tmp_path / 'd.npy'}"]) == 2
    assert "given both by --image and by --input" in capsys.readouterr().err
    assert main(base + ["--image", str(path), "--mean", "1,2"]) == 2
    assert "--image data: mean must be one number or one per channel (3)" in \
        capsys.readouterr().err
    assert main(base + ["--image", str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    assert main(base + ["--draw", str(tmp_path / "x.png")]) == 2
    assert "given with --image" in capsys.readouterr().err
    assert main(base + ["--image", str(path), "--draw", str(tmp_path / "x.png")]) == 2
    assert "no detector top" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()  # refused before anything ran
