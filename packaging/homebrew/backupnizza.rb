# Homebrew formula, built from a source tarball of a release. Not run in this project's CI
# (which is Debian only): the macOS build is not checked here yet (see docs/operations.md).
# To use it from a tap: copy it to your tap's Formula/ directory and fill in url and sha256.
class Backupnizza < Formula
  desc "An ssh-agent for backup jobs: restic and rclone on cron schedules, one-time secrets"
  homepage "https://example.invalid/backupnizza"
  url "https://example.invalid/backupnizza/archive/v0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license any_of: ["MIT", "Apache-2.0"]

  depends_on "rust" => :build
  depends_on "restic" => :recommended

  def install
    system "cargo", "install", "--locked", *std_cargo_args
    %w[backupnizza secretbox].each do |program|
      (man1/"#{program}.1").write Utils.safe_popen_read(bin/"backupnizza", "man", "--for", program)
      generate_completions_from_executable(bin/"backupnizza", "completions", "--for", program,
                                           base_name: program, shells: [:bash, :zsh, :fish])
    end
    (share/"backupnizza").install "backup.yaml.example", "examples/org.backupnizza.daemon.plist"
  end

  service do
    run [opt_bin/"backupnizza", "run", "-c", "#{Dir.home}/.config/backupnizza/backup.yaml"]
    keep_alive crashed: true
    log_path var/"log/backupnizza.log"
    error_log_path var/"log/backupnizza.log"
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/backupnizza --version")
    system bin/"backupnizza", "validate", "-c", share/"backupnizza/backup.yaml.example"
  end
end
