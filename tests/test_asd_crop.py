"""crop_asd_face: LR-ASD's face crop (40 % context, grey 110 padding, centre 112 of a 224 resize)."""

from __future__ import annotations

import numpy as np
import pytest

from rtdiar.tracking import crop_asd_face

BLUE_AS_GREY = 29  # cv2's BGR2GRAY of pure blue: 0.114 * 255


@pytest.mark.parametrize(("box", "scale"), [
    ((150.0, 100.0, 250.0, 200.0), 1.0),  # centre (200, 150), half-size s = 50
    ((175.0, 125.0, 225.0, 175.0), 2.0),  # half the box, scaled back up about its centre
    ((170.0, 100.0, 230.0, 200.0), 1.0),  # narrower: s = max(w, h) / 2 still 50
])
def test_the_kept_centre_is_where_it_should_be(box: tuple[float, ...], scale: float) -> None:
    # Crop rows y-s .. y+1.8s = 100 .. 240 and columns x-1.4s .. x+1.4s = 130 .. 270; its centre half,
    # all the model sees, is rows 135 .. 205 and columns 165 .. 235: paint exactly that blue.
    image = np.full((400, 400, 3), 200, np.uint8)
    image[135:205, 165:235] = (255, 0, 0)
    face = crop_asd_face(image, np.array(box), scale)
    assert face.shape == (112, 112) and face.dtype == np.uint8
    assert np.all(face[2:-2, 2:-2] == BLUE_AS_GREY)
    assert np.mean(face == BLUE_AS_GREY) > 0.95  # only the outermost pixels blend with the white


def test_padding_is_grey_110_where_the_crop_leaves_the_frame() -> None:
    # Centre (30, 30), s = 90: the kept columns run from x = -33 to 93, so the left 33 of their
    # 126 pixels (29 of the 112 output columns) lie left of the frame.
    image = np.zeros((300, 300, 3), np.uint8)
    face = crop_asd_face(image, np.array([0.0, 0.0, 60.0, 60.0]), 3.0)
    assert np.all(face[:, :28] == 110)
    assert np.all(face[:, 31:] == 0)


def test_a_crop_wholly_outside_or_degenerate_still_has_the_right_shape() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    outside = crop_asd_face(image, np.array([500.0, 500.0, 600.0, 600.0]), 1.2)
    assert outside.shape == (112, 112) and np.all(outside == 110)
    point = crop_asd_face(image, np.array([50.0, 50.0, 50.0, 50.0]), 1.2)
    assert point.shape == (112, 112) and point.dtype == np.uint8
