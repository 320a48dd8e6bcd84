# Whether a string is a listen address `cc-ci.socket` can take: `IPv4:port`, `[IPv6]:port`
# (port 1-65535, no leading zeros) or an absolute unix-socket path (at most 107 bytes, no spaces
# or control characters). systemd accepts more spellings (a bare port, `localhost:8088`, abstract
# sockets); cc-ci's daemon does not bind all of them, so only these three are allowed.
#
# Builtins only, no nixpkgs: scripts/check-nix evaluates this file with plain Nix against the
# shared cases in tests/listen-cases.json, and crates/daemon/src/config/listen.rs is held to the same
# cases. Keep the two in step.
listen:
let
  matches = re: s: builtins.match re s != null;
  # Digits only, no leading zero: safe to read with fromJSON.
  number = s: builtins.fromJSON s;

  isPort = p: matches "[1-9][0-9]{0,4}" p && number p <= 65535;

  isIPv4 =
    s:
    let
      octet = "(0|[1-9][0-9]{0,2})";
      parts = builtins.match "${octet}\\.${octet}\\.${octet}\\.${octet}" s;
    in
    parts != null && builtins.all (o: number o <= 255) parts;

  # The colon-separated pieces of `s` ("" gives one empty piece).
  pieces = s: builtins.filter builtins.isString (builtins.split ":" s);

  isHexGroup = matches "[0-9a-fA-F]{1,4}";

  # How many 16-bit groups `side` holds, or null when it is malformed. Only the last side may end
  # in an embedded IPv4 address, which counts as two groups.
  groupCount =
    isLast: side:
    if side == "" then
      0
    else
      let
        ps = pieces side;
        n = builtins.length ps;
        last = builtins.elemAt ps (n - 1);
        init = builtins.genList (i: builtins.elemAt ps i) (n - 1);
        lastGroups =
          if isHexGroup last then
            1
          else if isLast && isIPv4 last then
            2
          else
            null;
      in
      if builtins.all isHexGroup init && lastGroups != null then n - 1 + lastGroups else null;

  isIPv6 =
    s:
    let
      halves = builtins.filter builtins.isString (builtins.split "::" s);
      counts =
        if builtins.length halves == 1 then
          [ (groupCount true s) ]
        else
          [
            (groupCount false (builtins.elemAt halves 0))
            (groupCount true (builtins.elemAt halves 1))
          ];
      total = builtins.foldl' (a: b: a + b) 0 counts;
    in
    builtins.length halves <= 2
    && !(builtins.elem null counts)
    # `::` stands for at least one zero group.
    && (if builtins.length halves == 1 then total == 8 else total <= 7);

  isUnixPath =
    s: matches "/[^[:space:][:cntrl:]]+" s && builtins.stringLength s <= 107;

  bracketed = builtins.match "\\[([^]]*)]:([^:]*)" listen;
  plain = builtins.match "([^:]*):([^:]*)" listen;
in
builtins.isString listen
  && (
    if builtins.substring 0 1 listen == "/" then
      isUnixPath listen
    else if bracketed != null then
      isIPv6 (builtins.elemAt bracketed 0) && isPort (builtins.elemAt bracketed 1)
    else
      plain != null && isIPv4 (builtins.elemAt plain 0) && isPort (builtins.elemAt plain 1)
  )
