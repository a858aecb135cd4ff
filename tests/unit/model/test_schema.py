"""Label schema: configs the backend can serve, and configs it must refuse naming the tag."""

from __future__ import annotations

import pytest

from model.schema import Head, LabelSchema, SchemaError


def test_shipped_weather_config() -> None:
    schema = LabelSchema.from_file()
    assert schema.image_name == "image"
    assert schema.image_key == "image"
    assert schema.heads == (Head("timeofday", ("day", "night", "dusk")), Head("weather", ("clear", "rain", "snow")))


def test_several_heads_aliases_and_single_radio() -> None:
    xml = """
    <View>
      <Image name="photo" value="$img_url"/>
      <Choices name="scene" toName="photo" choice="single-radio">
        <Choice value="Urban street" alias="urban"/>
        <Choice value="highway"/>
      </Choices>
      <View>
        <Choices name="quality" toName="photo">
          <Choice value="good"/><Choice value="blurry"/><Choice value="dark"/>
        </Choices>
      </View>
      <Choices name="glare" toName="photo" choice="single">
        <Choice value="yes"/><Choice value="no"/>
      </Choices>
    </View>"""
    schema = LabelSchema.from_xml(xml)
    assert schema.image_name == "photo"
    assert schema.image_key == "img_url"
    assert schema.head_names == ["scene", "quality", "glare"]
    # the alias is what Label Studio writes into results, so it is the class value
    assert schema.head("scene").classes == ("urban", "highway")
    assert schema.head("quality").index("dark") == 2
    assert LabelSchema.from_dict(schema.to_dict()) == schema


def test_unknown_class_names_head_and_classes() -> None:
    head = LabelSchema.from_file().head("weather")
    with pytest.raises(KeyError, match="fog.*weather.*clear, rain, snow"):
        head.index("fog")


_CHOICES = '<Choices name="{name}" toName="{to}" {extra}><Choice value="a"/><Choice value="b"/></Choices>'


def _config(*parts: str, image: str = '<Image name="image" value="$image"/>') -> str:
    return "<View>" + image + "".join(parts) + "</View>"


@pytest.mark.parametrize(
    ("xml", "tag", "reason"),
    [
        pytest.param(
            _config(_CHOICES.format(name="w", to="image", extra=""), image=""), "<Image>", "no <Image>", id="no-image"
        ),
        pytest.param(
            _config(
                _CHOICES.format(name="w", to="a", extra=""),
                image='<Image name="a" value="$a"/><Image name="b" value="$b"/>',
            ),
            "<Image>",
            "2 <Image> tags",
            id="two-images",
        ),
        pytest.param(
            _config(_CHOICES.format(name="w", to="image", extra='choice="multiple"')),
            '<Choices name="w">',
            "multiple",
            id="multi-choice",
        ),
        pytest.param(_config('<Header value="nothing to answer"/>'), "<Choices>", "no <Choices>", id="no-choices"),
        pytest.param(
            _config('<Text name="caption" value="$text"/>', _CHOICES.format(name="w", to="caption", extra="")),
            '<Choices name="w">',
            "caption",
            id="choices-over-text",
        ),
        pytest.param(
            _config('<Choices name="w" toName="image"><Choice value="only"/></Choices>'),
            '<Choices name="w">',
            "at least two",
            id="one-choice",
        ),
        pytest.param(
            _config(_CHOICES.format(name="w", to="image", extra=""), _CHOICES.format(name="w", to="image", extra="")),
            "<Choices>",
            "unique",
            id="duplicate-head",
        ),
        pytest.param(
            _config('<Choices name="w" toName="image"><Choice value="a"/><Choice value="a"/></Choices>'),
            '<Choices name="w">',
            "duplicate",
            id="duplicate-choice",
        ),
    ],
)
def test_bad_config_names_the_tag(xml: str, tag: str, reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        LabelSchema.from_xml(xml)
    message = str(info.value)
    assert message.startswith(tag), message
    assert reason in message


def test_invalid_xml() -> None:
    with pytest.raises(SchemaError, match="not valid XML"):
        LabelSchema.from_xml("<View><Image name='image' value='$image'></View>")
