{
  description = "kvlab: measure LLM serving engines with KV-cache offload (vLLM + LMCache, tiers, Nsight Systems)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-unstable";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    crane.url = "github:ipetkov/crane";
  };

  outputs =
    {
      self,
      nixpkgs,
      rust-overlay,
      crane,
    }:
    let
      lib = nixpkgs.lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f (pkgsFor system));

      # Unfree packages are allowed by name or NVIDIA licence only: Nsight Systems and the CUDA
      # toolkit with its redistributable pieces. Anything else unfree still fails to evaluate.
      allowUnfreePredicate =
        pkg:
        let
          name = lib.getName pkg;
          licenses = lib.toList (pkg.meta.license or [ ]);
          nvidia = l: builtins.match ".*(CUDA|NVIDIA|NVidia|nvidia).*" (l.shortName or l.fullName or "") != null;
        in
        builtins.elem name [
          "nsight_systems"
          "cudatoolkit"
        ]
        || (licenses != [ ] && builtins.all nvidia licenses);

      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ (import rust-overlay) ];
          config = { inherit allowUnfreePredicate; };
        };

      # Everything for one system: the toolchain from rust-toolchain.toml, the crane builds, the
      # checks, the development shell and the images.
      perSystem =
        pkgs:
        let
          toolchain = pkgs.rust-bin.fromRustupToolchainFile ./rust-toolchain.toml;
          craneLib = (crane.mkLib pkgs).overrideToolchain (p: p.rust-bin.fromRustupToolchainFile ./rust-toolchain.toml);

          # The sources cargo sees, plus what the crates embed or read in tests (configs, the
          # Python launcher scripts, the report's font, test fixtures and snapshots).
          src = lib.cleanSourceWith {
            src = ./.;
            filter =
              path: type:
              let
                rel = lib.removePrefix (toString ./. + "/") (toString path);
              in
              !(lib.hasPrefix "results/" rel || lib.hasPrefix "target" rel || lib.hasPrefix ".kvlab" rel || lib.hasPrefix ".venv" rel);
          };

          # The `nvtx` feature compiles NVTX through bindgen: libclang via the bindgen hook.
          nvtxFeatures = "xtask/nvtx,kvlab-lab/nvtx,kvlab-loadgen/nvtx,kvlab-emulator/nvtx";
          commonArgs = {
            inherit src;
            pname = "kvlab";
            version = "0.1.0";
            strictDeps = true;
            nativeBuildInputs = [
              pkgs.pkg-config
              pkgs.rustPlatform.bindgenHook
            ];
            cargoExtraArgs = "--locked --workspace --features ${nvtxFeatures}";
          };
          cargoArtifacts = craneLib.buildDepsOnly commonArgs;

          # `kvlab`: the one command line (the xtask binary), with NVTX ranges built in.
          kvlab = craneLib.buildPackage (
            commonArgs
            // {
              inherit cargoArtifacts;
              cargoExtraArgs = "--locked --package xtask --features nvtx";
              doCheck = false;
              postInstall = ''
                mv $out/bin/xtask $out/bin/kvlab
              '';
              meta.mainProgram = "kvlab";
            }
          );

          # configs/ where KVLAB_ROOT points in the images.
          kvlabRoot = pkgs.runCommand "kvlab-root" { } ''
            mkdir -p $out
            cp -r ${./configs} $out/configs
          '';

          # The Python the tests and the llama.cpp engine use. xllamacpp is on PyPI only: the
          # shell hook installs the pinned wheel into .venv (which sees these packages).
          python = pkgs.python3.withPackages (ps: [
            ps.numpy
            ps.gguf
            ps.pip
          ]);
          xllamacpp = "xllamacpp==2026.10.11549";

          cuda = pkgs.cudaPackages;

          # The test binaries and tests `checks.tests` leaves out (nextest filter expressions);
          # why each is listed where `checks` is defined.
          outsideTheSandbox = lib.concatStringsSep " | " [
            "binary_id(kvlab-lab::containers)"
            "binary_id(kvlab-lab::llamacpp)"
            "binary_id(kvlab-lab::security)"
            "binary_id(kvlab-lab::faults)"
            "binary_id(xtask::faults)"
            "binary_id(kvlab-report::html)"
            "binary_id(kvlab-sim::shared_traces)"
            "(package(kvlab-workload) & test(=full_shared_traces_parse))"
          ];
        in
        {
          packages = {
            default = kvlab;
            inherit kvlab;

            # The lab's command line as an OCI image: `$(nix build .#image-lab --print-out-paths) | docker load`.
            image-lab = pkgs.dockerTools.streamLayeredImage {
              name = "kvlab/lab";
              tag = "nix";
              contents = [
                kvlab
                pkgs.cacert
              ];
              config = {
                Entrypoint = [ "${kvlab}/bin/kvlab" ];
                Cmd = [ "--help" ];
                Env = [ "KVLAB_ROOT=${kvlabRoot}" ];
              };
            };

            # The emulated engine as an engine image (the contract of containers/README.md:
            # 0.0.0.0:8000, /etc/kvlab/engine.env, the disk tier on /kvcache).
            image-emulator = pkgs.dockerTools.streamLayeredImage {
              name = "kvlab/emulator";
              tag = "nix";
              contents = [
                pkgs.busybox
                pkgs.socat
              ];
              extraCommands = ''
                mkdir -p usr/local/bin opt/kvlab/.kvlab/serve kvcache tmp
                chmod 1777 tmp
                ln -s ${kvlab}/bin/kvlab usr/local/bin/kvlab
                ln -s ${kvlabRoot}/configs opt/kvlab/configs
                ln -s /kvcache opt/kvlab/.kvlab/serve/kvcache
              '';
              config = {
                Entrypoint = [
                  "/bin/sh"
                  "${./containers/emulator-entrypoint.sh}"
                ];
                Env = [ "KVLAB_ROOT=/opt/kvlab" ];
                WorkingDir = "/opt/kvlab";
                ExposedPorts."8000/tcp" = { };
              };
            };
          };

          # `nix flake check`: fmt, clippy and the whole workspace's tests (nextest, with the nvtx
          # feature), but for those that need what the Nix sandbox cannot have. A redis-server
          # (from nixpkgs) is started for the redis tier's tests, and Slurm's cluster tests are
          # skipped (KVLAB_SKIP_SLURM=1: its plan and script tests still run). Left out, and run by
          # `cargo xtask ci` instead:
          # - kvlab-lab::containers: a container runtime and the kvlab/* images;
          # - kvlab-lab::llamacpp, ::security, ::faults and xtask::faults: the llama.cpp engine,
          #   the xllamacpp wheel from PyPI (no network in the sandbox);
          # - kvlab-report::html: a headless Chromium;
          # - kvlab-sim::shared_traces and kvlab-workload's full_shared_traces_parse: the shared
          #   Mooncake/Azure traces in ../shared, outside this flake's source.
          checks = {
            inherit kvlab;
            fmt = craneLib.cargoFmt { inherit src; };
            clippy = craneLib.cargoClippy (
              commonArgs
              // {
                inherit cargoArtifacts;
                cargoClippyExtraArgs = "--all-targets -- -D warnings";
              }
            );
            tests = craneLib.cargoNextest (
              commonArgs
              // {
                inherit cargoArtifacts;
                nativeBuildInputs = commonArgs.nativeBuildInputs ++ [ pkgs.redis ];
                preConfigure = ''
                  redis-server --port 6399 --bind 127.0.0.1 --save "" --daemonize yes
                  export KVLAB_REDIS_URL=redis://127.0.0.1:6399
                  export KVLAB_SKIP_SLURM=1
                '';
                cargoNextestExtraArgs = "--no-fail-fast -E 'not (${outsideTheSandbox})'";
              }
            );
          };

          devShells.default = pkgs.mkShell {
            packages = [
              toolchain
              pkgs.redis
              pkgs.llama-cpp
              python
              cuda.nsight_systems
              cuda.cudatoolkit
              pkgs.pkg-config
            ];
            # libclang for the nvtx crate (bindgen).
            nativeBuildInputs = [ pkgs.rustPlatform.bindgenHook ];
            shellHook = ''
              # NVML (the GPU sampler) and CUDA load the host's driver libraries: on NixOS from
              # ${pkgs.addDriverRunpath.driverLink}/lib, elsewhere from the system's library path.
              export LD_LIBRARY_PATH="${pkgs.addDriverRunpath.driverLink}/lib''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
              # xllamacpp (llama.cpp's server as a wheel) is on PyPI only: a venv over the shell's
              # Python, created once; the tests find it through KVLAB_PYTHON.
              if [ ! -x .venv/bin/python ]; then
                python -m venv --system-site-packages .venv
                .venv/bin/pip install --quiet --disable-pip-version-check '${xllamacpp}'
              fi
              export KVLAB_PYTHON="$PWD/.venv/bin/python"
            '';
          };

          formatter = pkgs.nixfmt-rfc-style;
        };
      all = forAllSystems perSystem;
    in
    {
      packages = lib.mapAttrs (_: s: s.packages) all;
      checks = lib.mapAttrs (_: s: s.checks) all;
      devShells = lib.mapAttrs (_: s: s.devShells) all;
      formatter = lib.mapAttrs (_: s: s.formatter) all;
    };
}
