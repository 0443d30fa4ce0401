"""RTM: the reliable message protocol between sites and the rtm-server hub
(docs/rtm.md; guide: CIC Multi-Site, "Multi-Site RTM Client/Server
Components", "Multi-Site Tools").

Sans-I/O: :mod:`.elements` (typed message elements read in order),
:mod:`.messages` (the frames, checked), :mod:`.auth` (the site challenge),
:mod:`.session` (hub and site sessions with one transition table).
"""
