"""`python -m bench`: the backend benchmark (bench/backend.py);
`python -m bench scene [options]`: one whole scene through the server (bench/scene.py);
`python -m bench oip [options]`: the Open Inference Protocol codec's CPU (bench/oip_codec.py)."""

import sys

if sys.argv[1:2] == ["scene"]:
    from .scene import main as scene_main

    scene_main(sys.argv[2:])
elif sys.argv[1:2] == ["oip"]:
    from .oip_codec import main as oip_main

    oip_main(sys.argv[2:])
else:
    from .backend import main

    main()
