{{/*
Sidecar templates for other charts. Add this chart as a dependency (set `ls-token-refresher.deployment.enabled:
false` if you do not also want its Deployment) and include:

  ls-token-refresher.sidecar.container    the refresher container, one list item (for initContainers or containers)
  ls-token-refresher.sidecar.volumes      the PAT Secret volume (and CA volume), plus the in-memory token emptyDir
                                          in modes run and once
  ls-token-refresher.sidecar.volumeMount  the read-only mount of the token directory for your app's container
                                          (modes run and once)
  ls-token-refresher.sidecar.proxyEnv     the app's LABEL_STUDIO_URL (the proxy) and placeholder
                                          LABEL_STUDIO_API_KEY, env list items (mode proxy, or run with proxy: true)

each with (dict "config" <dict> "context" $): `context`, the including chart's root context, is optional but
recommended: with it the container's defaults come from this chart's values as the parent sees them
(`ls-token-refresher.image.*` and `global.imageRegistry` for the image, `image.pullPolicy`, and the OpenShift switch
`global.compatibility.openshift.adaptSecurityContext` for the securityContext), so a mirror registry or a pinned
digest set once applies to the Deployment and every sidecar alike. Under an alias, pass the subchart's context:
(index $.Subcharts "<alias>"). Without `context` the image is the fixed default below. The sidecar needs no
Kubernetes API access (the PAT Secret is a volume): keep
automountServiceAccountToken false on the pod; the refresher then posts no Events and reports through its logs,
/readyz and /metrics.

Which mode: `gate` puts an auth gate in front of an ML backend in the same pod (the other direction: callers must
bring a Label Studio credential; see below). `proxy` for clients you cannot change (label-studio-sdk, the ML backend): they talk to
http://127.0.0.1:<proxyPort> with a placeholder key and hold no credential; the proxy adds the current token to every
request. `run` for code you own: it reads the token files. `once` for a Job's init container.

The config dict has these keys (all but url and patSecret.name optional; mode gate takes no patSecret); unknown keys
and bad values are errors:

  url                 Label Studio base URL (LS_URL). Required.
  patSecret.name      Secret holding the PAT, mounted as a directory and re-read on change (LS_PAT_FILE). Required
                      (not for mode gate).
  patSecret.key       key of the PAT in that Secret (default "pat")
  mode                run (default: keep the token files fresh) | once (publish one token and exit: plain init
                      container) | proxy (the auth proxy only: no token files, no token volume) | gate (the auth
                      gate in front of the backend on 127.0.0.1:<backendPort>: admits requests carrying a Label
                      Studio access token (Bearer) or legacy token (Token) that Label Studio accepts, of a user the
                      policy admits, and Label Studio's own Basic credentials; no PAT, no token files)
  native              true (default): a native sidecar (Kubernetes >= 1.29, or 1.28 with the SidecarContainers
                      feature gate) — put the container in initContainers;
                      it gets restartPolicy: Always and a startupProbe on /readyz, so the app starts only once the
                      first token is published (held, in proxy mode). false: a classic sidecar for containers (in
                      mode run pair it with a mode=once init container so the first token exists before the app
                      starts; in mode proxy the app may get 503 + Retry-After until the first token is held).
  proxy               mode run only: also serve the auth proxy (LS_PROXY_ADDR) beside the files (default false)
  proxyPort           the proxy listens on 127.0.0.1:<proxyPort> (default 9418; only containers of the same pod reach
                      it, and whoever reaches it acts as the PAT's user)
  proxyTimeout        longest silence while forwarding: Label Studio's answer, or the next piece of a body (LS_PROXY_TIMEOUT,
                      a duration such as 120s; default the program's, 120s)
  proxyUpstreamHost   send the upstream's Host instead of the client's (LS_PROXY_UPSTREAM_HOST), for a url behind
                      an ingress that routes by Host (default false)
  gatePort            mode gate: the gate listens on 0.0.0.0:<gatePort> (default 9091): point the Service (and Label
                      Studio's ML backend URL) there, never at the backend's own port
  backendPort         mode gate: the backend's port on the pod's loopback (LS_BACKEND_URL http://127.0.0.1:<port>;
                      default 9090)
  allowOrgs           mode gate: list of organization ids whose users are admitted (LS_GATE_ALLOW_ORGS)
  allowUsers          mode gate: list of user ids or emails admitted (LS_GATE_ALLOW_USERS); allowOrgs and/or
                      allowUsers is required: there is no "any Label Studio user" default
  basicAuthSecret     mode gate: {name: NAME, key: KEY (default "basic")}: a Secret holding `user:password`, the
                      Basic credentials Label Studio is configured with for this backend (LS_GATE_BASIC_AUTH_FILE)
  gateCacheTTL        mode gate: longest a verified credential is trusted without asking Label Studio again
                      (LS_GATE_CACHE_TTL; default the program's, 60s): a deactivated user keeps access that long
  gateTimeout         mode gate: longest silence while forwarding to the backend (LS_GATE_TIMEOUT; default 300s)
  apiKeyPlaceholder   LABEL_STUDIO_API_KEY that proxyEnv gives the app (default "placeholder-not-a-token"; the proxy
                      drops whatever Authorization the app sends). label-studio-sdk also takes a JWT-shaped one,
                      see the chart README.
  name                container name (default "ls-token-refresher", "ls-token-refresher-init" for mode once)
  image               image reference (default: from `image.*`/`global.imageRegistry` with `context`, else the
                      chart's appVersion image on ghcr.io)
  imagePullPolicy     default `image.pullPolicy` with `context`, else IfNotPresent
  tokenDir            modes run, once: where the token files appear (default /var/run/secrets/label-studio): token,
                      authorization, expires_at, swapped atomically through a ..data symlink. Mount the directory,
                      never a subPath.
  volumeName          name of the token emptyDir (default "ls-token"; the PAT volume is "<volumeName>-pat", the CA
                      volume "<volumeName>-ca")
  fileMode            modes run, once: octal mode of the token files (default "0640": readable by the pod's
                      fsGroup, so set securityContext.fsGroup on the pod when the app runs as another user)
  adminPort           port of /livez, /readyz, /metrics (default 9417; must be free in the pod)
  logFormat           plain | json (default json)
  logLevel            error | warn | info | debug | trace (default info; one word: libraries stay at warn)
  enableQuit          serve POST /quitquitquit (default false): a Job's main container stops a classic sidecar when
                      it is done. Only loopback peers with the header X-LS-Quit are obeyed, e.g. with busybox:
                        wget -q -O /dev/null --post-data '' --header 'X-LS-Quit: 1' http://127.0.0.1:9417/quitquitquit
                      or curl -fsS -X POST -H 'X-LS-Quit: 1' http://127.0.0.1:9417/quitquitquit
                      (native sidecars need none of this: Kubernetes stops them when the Job's containers end)
  caBundle            {configMap: NAME} or {secret: NAME}, with key (default ca.crt): extra PEM CAs (LS_CA_FILE)
  env                 map of extra environment variables, e.g. {LS_REFRESH_FRACTION: "0.5"}
  resources           container resources (default 10m/32Mi requests, 200m/64Mi limits)
  securityContext     container securityContext (default: non-root 65532, read-only root FS, no capabilities,
                      no privilege escalation, seccomp RuntimeDefault; on OpenShift, with `context`, without the
                      pinned UID/GID)
*/}}

{{- define "ls-token-refresher.sidecar.defaultImage" -}}
ghcr.io/ls-token-refresher/ls-token-refresher:0.1.0
{{- end }}

{{- define "ls-token-refresher.sidecar.defaultSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ls-token-refresher.sidecar.defaultResources" -}}
requests:
  cpu: 10m
  memory: 32Mi
limits:
  cpu: 200m
  memory: 64Mi
{{- end }}

{{/* The config with defaults filled in, as YAML (hasKey keeps explicit false / "" values). Checks every key. */}}
{{- define "ls-token-refresher.sidecar.config" -}}
{{- $c := .config | default dict }}
{{- $known := list "url" "patSecret" "mode" "native" "proxy" "proxyPort" "proxyTimeout" "proxyUpstreamHost"
  "apiKeyPlaceholder" "name" "image" "imagePullPolicy" "tokenDir" "volumeName" "fileMode" "adminPort" "logFormat"
  "logLevel" "enableQuit" "caBundle" "env" "resources" "securityContext" "gatePort" "backendPort" "allowOrgs"
  "allowUsers" "basicAuthSecret" "gateCacheTTL" "gateTimeout" }}
{{- range $k, $_ := $c }}
{{- if not (has $k $known) }}
{{- fail (printf "ls-token-refresher sidecar: unknown config key %q (known: %s)" $k (join ", " $known)) }}
{{- end }}
{{- end }}
{{- $mode := $c.mode | default "run" }}
{{- if not (has $mode (list "run" "once" "proxy" "gate")) }}
{{- fail (printf "ls-token-refresher sidecar: mode must be run, once, proxy or gate, not %q" $mode) }}
{{- end }}
{{- $gate := eq $mode "gate" }}
{{- $bools := dict "native" true "proxy" false "proxyUpstreamHost" false "enableQuit" false }}
{{- range $k, $default := $bools }}
{{- if hasKey $c $k }}
{{- if not (kindIs "bool" (get $c $k)) }}
{{- fail (printf "ls-token-refresher sidecar: %s must be true or false, not %q" $k (toString (get $c $k))) }}
{{- end }}
{{- $_ := set $bools $k (get $c $k) }}
{{- end }}
{{- end }}
{{- if and $bools.proxy (ne $mode "run") }}
{{- fail (printf "ls-token-refresher sidecar: proxy: true is for mode run (mode proxy serves only the proxy; mode once exits), not mode %q" $mode) }}
{{- end }}
{{- $adminPort := $c.adminPort | default 9417 | int }}
{{- $proxyPort := $c.proxyPort | default 9418 | int }}
{{- $gatePort := $c.gatePort | default 9091 | int }}
{{- $backendPort := $c.backendPort | default 9090 | int }}
{{- range $k, $port := dict "adminPort" $adminPort "proxyPort" $proxyPort "gatePort" $gatePort "backendPort" $backendPort }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail (printf "ls-token-refresher sidecar: %s must be a port number (1-65535), not %v" $k $port) }}
{{- end }}
{{- end }}
{{- $serveProxy := or (eq $mode "proxy") $bools.proxy }}
{{- if and $serveProxy (eq $adminPort $proxyPort) }}
{{- fail (printf "ls-token-refresher sidecar: adminPort and proxyPort are both %d" $adminPort) }}
{{- end }}
{{- if and $gate (or (eq $adminPort $gatePort) (eq $adminPort $backendPort) (eq $gatePort $backendPort)) }}
{{- fail (printf "ls-token-refresher sidecar: adminPort (%d), gatePort (%d) and backendPort (%d) must differ" $adminPort $gatePort $backendPort) }}
{{- end }}
{{- $allowOrgs := $c.allowOrgs | default list }}
{{- $allowUsers := $c.allowUsers | default list }}
{{- if and $gate (not $allowOrgs) (not $allowUsers) }}
{{- fail "ls-token-refresher sidecar: mode gate admits nobody without allowOrgs and/or allowUsers" }}
{{- end }}
{{- range $k, $v := dict "allowOrgs" $allowOrgs "allowUsers" $allowUsers }}
{{- if not (kindIs "slice" $v) }}
{{- fail (printf "ls-token-refresher sidecar: %s must be a list" $k) }}
{{- end }}
{{- end }}
{{- $logFormat := $c.logFormat | default "json" }}
{{- if not (has $logFormat (list "plain" "json")) }}
{{- fail (printf "ls-token-refresher sidecar: logFormat must be plain or json, not %q" $logFormat) }}
{{- end }}
{{- $logLevel := $c.logLevel | default "info" }}
{{- if not (has $logLevel (list "error" "warn" "info" "debug" "trace")) }}
{{- fail (printf "ls-token-refresher sidecar: logLevel must be one of error, warn, info, debug, trace (one word), not %q" $logLevel) }}
{{- end }}
{{- $durations := dict "proxyTimeout" ($c.proxyTimeout | default "" | toString) "gateCacheTTL" ($c.gateCacheTTL | default "" | toString) "gateTimeout" ($c.gateTimeout | default "" | toString) }}
{{- range $k, $d := $durations }}
{{- if and $d (not (regexMatch "^([0-9]+(ms|s|m|h))+$" $d)) }}
{{- fail (printf "ls-token-refresher sidecar: %s must be a duration such as 120s or 2m, not %q" $k $d) }}
{{- end }}
{{- end }}
{{- $proxyTimeout := $durations.proxyTimeout }}
{{- /* This chart's own context as the including chart sees it (see the top of this file). */}}
{{- $sub := dict }}
{{- with .context }}
{{- if eq .Chart.Name "ls-token-refresher" }}
{{- $sub = . }}
{{- else }}
{{- $sub = index (.Subcharts | default dict) "ls-token-refresher" | default dict }}
{{- if not $sub }}
{{- fail "ls-token-refresher sidecar: context has no subchart named ls-token-refresher; under an alias pass (index $.Subcharts \"<alias>\")" }}
{{- end }}
{{- end }}
{{- end }}
{{- $image := include "ls-token-refresher.sidecar.defaultImage" . }}
{{- $pullPolicy := "IfNotPresent" }}
{{- $sc := include "ls-token-refresher.sidecar.defaultSecurityContext" . | fromYaml }}
{{- if $sub }}
{{- $image = include "ls-token-refresher.image" $sub }}
{{- $pullPolicy = $sub.Values.image.pullPolicy | default $pullPolicy }}
{{- $sc = include "ls-token-refresher.securityContext" (dict "context" $sub "sc" $sc) | fromYaml }}
{{- end }}
{{- $pat := $c.patSecret | default dict }}
{{- $ca := $c.caBundle | default dict }}
{{- $basic := $c.basicAuthSecret | default dict }}
{{- if and $gate $pat }}
{{- fail "ls-token-refresher sidecar: mode gate takes no patSecret (it holds no credential of its own)" }}
{{- end }}
{{- if and (not $gate) (or $allowOrgs $allowUsers $basic) }}
{{- fail "ls-token-refresher sidecar: allowOrgs, allowUsers and basicAuthSecret are for mode gate" }}
{{- end }}
url: {{ required "ls-token-refresher sidecar: config.url (Label Studio base URL) is required" $c.url | quote }}
{{- if not $gate }}
patSecretName: {{ required "ls-token-refresher sidecar: config.patSecret.name is required" $pat.name | quote }}
{{- end }}
patSecretKey: {{ $pat.key | default "pat" | quote }}
mode: {{ $mode }}
native: {{ and $bools.native (ne $mode "once") }}
files: {{ not (has $mode (list "proxy" "gate")) }}
gate: {{ $gate }}
gateAddr: {{ printf "0.0.0.0:%d" $gatePort | quote }}
gatePort: {{ $gatePort }}
backendUrl: {{ printf "http://127.0.0.1:%d" $backendPort | quote }}
allowOrgs: {{ join "," $allowOrgs | quote }}
allowUsers: {{ join "," $allowUsers | quote }}
basicSecretName: {{ $basic.name | default "" | quote }}
basicSecretKey: {{ $basic.key | default "basic" | quote }}
gateCacheTTL: {{ $durations.gateCacheTTL | quote }}
gateTimeout: {{ $durations.gateTimeout | quote }}
serveProxy: {{ $serveProxy }}
proxyAddr: {{ printf "127.0.0.1:%d" $proxyPort | quote }}
proxyTimeout: {{ $proxyTimeout | quote }}
proxyUpstreamHost: {{ $bools.proxyUpstreamHost }}
apiKeyPlaceholder: {{ $c.apiKeyPlaceholder | default "placeholder-not-a-token" | quote }}
name: {{ $c.name | default (ternary "ls-token-refresher-init" "ls-token-refresher" (eq $mode "once")) | quote }}
image: {{ $c.image | default $image | quote }}
imagePullPolicy: {{ $c.imagePullPolicy | default $pullPolicy }}
tokenDir: {{ $c.tokenDir | default "/var/run/secrets/label-studio" | quote }}
volumeName: {{ $c.volumeName | default "ls-token" | quote }}
fileMode: {{ $c.fileMode | default "0640" | toString | quote }}
adminPort: {{ $adminPort }}
logFormat: {{ $logFormat | quote }}
logLevel: {{ $logLevel | quote }}
enableQuit: {{ $bools.enableQuit }}
caConfigMap: {{ $ca.configMap | default "" | quote }}
caSecret: {{ $ca.secret | default "" | quote }}
caKey: {{ $ca.key | default "ca.crt" | quote }}
env:
  {{- toYaml ($c.env | default dict) | nindent 2 }}
resources:
  {{- $c.resources | default (include "ls-token-refresher.sidecar.defaultResources" . | fromYaml) | toYaml | nindent 2 }}
securityContext:
  {{- $c.securityContext | default $sc | toYaml | nindent 2 }}
{{- end }}

{{- define "ls-token-refresher.sidecar.container" -}}
{{- $cfg := include "ls-token-refresher.sidecar.config" . | fromYaml }}
{{- if hasKey $cfg "Error" }}{{ fail $cfg.Error }}{{ end -}}
- name: {{ $cfg.name }}
  image: {{ $cfg.image }}
  imagePullPolicy: {{ $cfg.imagePullPolicy }}
  {{- if $cfg.native }}
  # Native sidecar (Kubernetes >= 1.29; 1.28 with the SidecarContainers gate): starts before the app containers
  # and keeps running beside them.
  restartPolicy: Always
  {{- end }}
  args:
    - {{ $cfg.mode }}
  env:
    - name: LS_URL
      value: {{ $cfg.url | quote }}
    {{- if $cfg.gate }}
    # The gate verifies callers' tokens with Label Studio; it holds no credential of its own.
    - name: LS_BACKEND_URL
      value: {{ $cfg.backendUrl | quote }}
    # Every interface: the gate is what the Service exposes (TLS is the ingress's job).
    - name: LS_GATE_ADDR
      value: {{ $cfg.gateAddr | quote }}
    {{- range $k, $v := dict "LS_GATE_ALLOW_ORGS" $cfg.allowOrgs "LS_GATE_ALLOW_USERS" $cfg.allowUsers "LS_GATE_CACHE_TTL" $cfg.gateCacheTTL "LS_GATE_TIMEOUT" $cfg.gateTimeout }}
    {{- if $v }}
    - name: {{ $k }}
      value: {{ $v | quote }}
    {{- end }}
    {{- end }}
    {{- if $cfg.basicSecretName }}
    - name: LS_GATE_BASIC_AUTH_FILE
      value: {{ printf "/etc/ls-token-refresher/basic/%s" $cfg.basicSecretKey | quote }}
    {{- end }}
    {{- else }}
    - name: LS_PAT_FILE
      value: {{ printf "/etc/ls-token-refresher/pat/%s" $cfg.patSecretKey | quote }}
    {{- end }}
    {{- if $cfg.files }}
    - name: LS_TOKEN_DIR
      value: {{ $cfg.tokenDir | quote }}
    - name: LS_FILE_MODE
      value: {{ $cfg.fileMode | quote }}
    {{- end }}
    {{- if $cfg.serveProxy }}
    # Loopback only: the app shares the pod's network namespace; nothing outside the pod reaches the proxy.
    - name: LS_PROXY_ADDR
      value: {{ $cfg.proxyAddr | quote }}
    {{- if $cfg.proxyTimeout }}
    - name: LS_PROXY_TIMEOUT
      value: {{ $cfg.proxyTimeout | quote }}
    {{- end }}
    {{- if $cfg.proxyUpstreamHost }}
    - name: LS_PROXY_UPSTREAM_HOST
      value: "true"
    {{- end }}
    {{- end }}
    {{- if ne $cfg.mode "once" }}
    - name: LS_ADMIN_ADDR
      value: {{ printf "0.0.0.0:%d" ($cfg.adminPort | int) | quote }}
    {{- end }}
    - name: LS_LOG_FORMAT
      value: {{ $cfg.logFormat | quote }}
    - name: LS_LOG_LEVEL
      value: {{ $cfg.logLevel | quote }}
    {{- if or $cfg.caConfigMap $cfg.caSecret }}
    - name: LS_CA_FILE
      value: {{ printf "/etc/ls-token-refresher/ca/%s" $cfg.caKey | quote }}
    {{- end }}
    {{- if $cfg.enableQuit }}
    - name: LS_ENABLE_QUIT
      value: "true"
    {{- end }}
    {{- range $k, $v := $cfg.env }}
    - name: {{ $k }}
      value: {{ $v | toString | quote }}
    {{- end }}
  {{- if ne $cfg.mode "once" }}
  ports:
    - name: ls-admin
      containerPort: {{ $cfg.adminPort }}
      protocol: TCP
    {{- if $cfg.gate }}
    - name: ls-gate
      containerPort: {{ $cfg.gatePort }}
      protocol: TCP
    {{- end }}
  {{- if $cfg.native }}
  # The app containers start only after this passes: /readyz is true once the first token is published.
  startupProbe:
    httpGet:
      path: /readyz
      port: ls-admin
    periodSeconds: 1
    failureThreshold: 120
    timeoutSeconds: 2
  {{- end }}
  livenessProbe:
    httpGet:
      path: /livez
      port: ls-admin
    periodSeconds: 10
    failureThreshold: 3
    timeoutSeconds: 2
  readinessProbe:
    httpGet:
      path: /readyz
      port: ls-admin
    periodSeconds: 5
    failureThreshold: 2
    timeoutSeconds: 2
  {{- end }}
  resources:
    {{- toYaml $cfg.resources | nindent 4 }}
  securityContext:
    {{- toYaml $cfg.securityContext | nindent 4 }}
  volumeMounts:
    {{- if $cfg.files }}
    - name: {{ $cfg.volumeName }}
      mountPath: {{ $cfg.tokenDir | quote }}
    {{- end }}
    {{- if $cfg.gate }}
    {{- if $cfg.basicSecretName }}
    - name: {{ printf "%s-basic" $cfg.volumeName }}
      mountPath: /etc/ls-token-refresher/basic
      readOnly: true
    {{- end }}
    {{- else }}
    - name: {{ printf "%s-pat" $cfg.volumeName }}
      mountPath: /etc/ls-token-refresher/pat
      readOnly: true
    {{- end }}
    {{- if or $cfg.caConfigMap $cfg.caSecret }}
    - name: {{ printf "%s-ca" $cfg.volumeName }}
      mountPath: /etc/ls-token-refresher/ca
      readOnly: true
    {{- end }}
{{- end }}

{{- define "ls-token-refresher.sidecar.volumes" -}}
{{- $cfg := include "ls-token-refresher.sidecar.config" . | fromYaml }}
{{- if hasKey $cfg "Error" }}{{ fail $cfg.Error }}{{ end -}}
{{- if $cfg.files -}}
# Token files live in memory only and are shared with the app as a whole directory (a subPath never updates).
- name: {{ $cfg.volumeName }}
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{ end -}}
{{- if $cfg.gate }}
{{- if $cfg.basicSecretName }}
- name: {{ printf "%s-basic" $cfg.volumeName }}
  secret:
    secretName: {{ $cfg.basicSecretName }}
    defaultMode: 0440
    items:
      - key: {{ $cfg.basicSecretKey }}
        path: {{ $cfg.basicSecretKey }}
{{- end }}
{{- else -}}
- name: {{ printf "%s-pat" $cfg.volumeName }}
  secret:
    secretName: {{ $cfg.patSecretName }}
    defaultMode: 0440
    items:
      - key: {{ $cfg.patSecretKey }}
        path: {{ $cfg.patSecretKey }}
{{- end }}
{{- if $cfg.caConfigMap }}
- name: {{ printf "%s-ca" $cfg.volumeName }}
  configMap:
    name: {{ $cfg.caConfigMap }}
    items:
      - key: {{ $cfg.caKey }}
        path: {{ $cfg.caKey }}
{{- else if $cfg.caSecret }}
- name: {{ printf "%s-ca" $cfg.volumeName }}
  secret:
    secretName: {{ $cfg.caSecret }}
    defaultMode: 0444
    items:
      - key: {{ $cfg.caKey }}
        path: {{ $cfg.caKey }}
{{- end }}
{{- end }}

{{- define "ls-token-refresher.sidecar.volumeMount" -}}
{{- $cfg := include "ls-token-refresher.sidecar.config" . | fromYaml }}
{{- if hasKey $cfg "Error" }}{{ fail $cfg.Error }}{{ end -}}
{{- if not $cfg.files }}
{{- fail "ls-token-refresher sidecar: modes proxy and gate write no token files: give the app ls-token-refresher.sidecar.proxyEnv instead of the token volume" }}
{{- end -}}
- name: {{ $cfg.volumeName }}
  mountPath: {{ $cfg.tokenDir | quote }}
  readOnly: true
{{- end }}

{{/*
The app's side of the proxy: Label Studio's URL is the proxy on loopback, and the API key a placeholder (the proxy
replaces any Authorization with the current token, so the app holds no credential). Never give the app the PAT.
*/}}
{{- define "ls-token-refresher.sidecar.proxyEnv" -}}
{{- $cfg := include "ls-token-refresher.sidecar.config" . | fromYaml }}
{{- if hasKey $cfg "Error" }}{{ fail $cfg.Error }}{{ end -}}
{{- if not $cfg.serveProxy }}
{{- fail "ls-token-refresher sidecar: proxyEnv needs the proxy: set mode proxy (or proxy: true with mode run)" }}
{{- end -}}
- name: LABEL_STUDIO_URL
  value: {{ printf "http://%s" $cfg.proxyAddr | quote }}
- name: LABEL_STUDIO_API_KEY
  value: {{ $cfg.apiKeyPlaceholder | quote }}
{{- end }}
