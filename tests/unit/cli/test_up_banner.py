from llmserve.cli.suite import LocalSuite, Ports
from llmserve.cli.up import _banner


def test_the_banner_shows_the_openai_base_url_beside_the_grpc_endpoint(capsys):
    suite = LocalSuite(ports=Ports(gateway=50051, http=8123))
    _banner(suite, 1.0)
    out = capsys.readouterr().out
    assert "OpenAI API     http://127.0.0.1:8123/v1" in out
    assert "127.0.0.1:50051" in out
    assert "curl http://127.0.0.1:8123/v1/chat/completions" in out and "content-type: application/json" in out
