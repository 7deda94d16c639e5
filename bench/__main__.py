"""`python -m bench`: the backend benchmark (bench/backend.py);
`python -m bench scene [options]`: one whole scene through the server (bench/scene.py);
`python -m bench oip [options]`: the Open Inference Protocol codec's CPU (bench/oip_codec.py);
`python -m bench ml_tier [options]`: many endpoints, one lost, OIP v2 against /segment
(bench/ml_tier.py)."""

import sys

if sys.argv[1:2] == ["scene"]:
    from .scene import main as scene_main

    scene_main(sys.argv[2:])
elif sys.argv[1:2] == ["ml_tier"]:
    from .ml_tier import main as ml_tier_main

    ml_tier_main(sys.argv[2:])
elif sys.argv[1:2] == ["oip"]:
    from .oip_codec import main as oip_main

    oip_main(sys.argv[2:])
else:
    from .backend import main

    main()
