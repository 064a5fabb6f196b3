from mmtune.cli import build_parser


def test_generate_keeps_the_command_line_order_of_media():
    parse = lambda *media: build_parser().parse_args(["generate", "--checkpoint", "c", "--prompt", "p", *media]).media
    assert parse("--image", "7.png", "--audio", "q.wav") == [("image", "7.png"), ("audio", "q.wav")]
    assert parse("--audio", "q.wav", "--image", "7.png", "--image", "8.png") == \
        [("audio", "q.wav"), ("image", "7.png"), ("image", "8.png")]
    assert parse() == []
