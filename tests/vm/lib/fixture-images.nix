# The fixture images, built with dockerTools under the exact names and tags the fixture recipes'
# compose files use (tests/fixtures/recipes/*/*/compose.yml). They mirror what scripts/setup-swarm
# builds with `docker build` on Debian: a busybox base, and the web image on top of it serving a
# page that names its version. The only place images are built for the VM tests.
{ pkgs }:
let
  inherit (pkgs) lib dockerTools;

  # The fixture recipes name the images in the test registry of scripts/setup-swarm; the VM has
  # no registry, so deploys fall back to these local images (with swarm's warning).
  baseName = "127.0.0.1:5000/cc-ci-fixture/busybox";
  webName = "127.0.0.1:5000/cc-ci-fixture/web";

  # /bin (busybox and its applets), a minimal passwd/group and the directories the recipes use.
  baseRoot = pkgs.runCommand "cc-ci-fixture-busybox-root" { } ''
    mkdir -p $out/bin $out/etc $out/root $out/var/www $out/usr/local/bin
    # Every applet in /bin: busybox installs some (httpd among them) under sbin.
    for dir in ${pkgs.busybox}/bin ${pkgs.busybox}/sbin; do
      if [ -d "$dir" ]; then ln -sf "$dir"/* $out/bin/; fi
    done
    test -e $out/bin/httpd && test -e $out/bin/wget && test -e $out/bin/sh
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > $out/etc/passwd
    printf 'root:x:0:\nnogroup:x:65534:\n' > $out/etc/group
  '';

  baseConfig = {
    Env = [ "PATH=/usr/local/bin:/bin" ];
    Cmd = [ "/bin/sh" ];
  };

  base = dockerTools.buildImage {
    name = baseName;
    tag = "base";
    copyToRoot = [ baseRoot ];
    # The Nix store cannot hold a sticky world-writable directory; create it in the layer.
    extraCommands = ''
      mkdir -p tmp
      chmod 1777 tmp
    '';
    config = baseConfig;
  };

  web =
    version:
    dockerTools.buildImage {
      name = webName;
      tag = toString version;
      fromImage = base;
      copyToRoot = [
        (pkgs.runCommand "cc-ci-fixture-web-${toString version}-root" { } ''
          mkdir -p $out/www $out/usr/local/bin
          echo "cc-ci fixture web version ${toString version}" > $out/www/index.html
          cp ${../../fixtures/images/web/serve} $out/usr/local/bin/serve
          chmod 0555 $out/usr/local/bin/serve
        '')
      ];
      config = baseConfig // {
        Env = baseConfig.Env ++ [ "WEB_VERSION=${toString version}" ];
        ExposedPorts."80/tcp" = { };
        Cmd = [ "/usr/local/bin/serve" ];
      };
    };

  images = [
    base
    (web 1)
    (web 2)
  ];
in
{
  inherit images;
  names = [
    "${baseName}:base"
    "${webName}:1"
    "${webName}:2"
  ];
  # Shell commands that load every image into the node's docker engine.
  loadScript = lib.concatMapStringsSep "\n" (image: "docker load --input ${image}") images;
}
