"""SIP and SIPREC endpoint: INVITEs in, one live call per dialog, one leg per recorded audio stream."""
