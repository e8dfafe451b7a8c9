{{/*
Sidecar (file mode) templates for other charts. Add this chart as a dependency (set
`ls-token-refresher.deployment.enabled: false` if you do not also want its Deployment) and include:

  ls-token-refresher.sidecar.container    the refresher container, one list item (for initContainers or containers)
  ls-token-refresher.sidecar.volumes      the in-memory token emptyDir, the PAT Secret volume (and CA volume)
  ls-token-refresher.sidecar.volumeMount  the read-only mount of the token directory for your app's container

each with (dict "config" <dict>). File mode needs no Kubernetes API access (the PAT Secret is a volume): keep
automountServiceAccountToken false on the pod; the refresher then posts no Events and reports through its logs,
/readyz and /metrics. The config dict has these keys (all but url and patSecret.name optional):

  url                 Label Studio base URL (LS_URL). Required.
  patSecret.name      Secret holding the PAT, mounted as a directory and re-read on change (LS_PAT_FILE). Required.
  patSecret.key       key of the PAT in that Secret (default "pat")
  mode                run (default: keep the token fresh) | once (publish one token and exit: plain init container)
  native              true (default): a native sidecar (Kubernetes >= 1.29, or 1.28 with the SidecarContainers
                      feature gate) — put the container in initContainers;
                      it gets restartPolicy: Always and a startupProbe on /readyz, so the app starts only once the
                      first token is published. false: a classic sidecar for containers (pair it with a mode=once
                      init container so the first token exists before the app starts).
  name                container name (default "ls-token-refresher", "ls-token-refresher-init" for mode once)
  image               image reference (default the chart's appVersion image)
  imagePullPolicy     default IfNotPresent
  tokenDir            where the token files appear (default /var/run/secrets/label-studio): token, authorization,
                      expires_at, swapped atomically through a ..data symlink. Mount the directory, never a subPath.
  volumeName          name of the token emptyDir (default "ls-token"; the PAT volume is "<volumeName>-pat")
  fileMode            octal mode of the token files (default "0640": readable by the pod's fsGroup, so set
                      securityContext.fsGroup on the pod when the app runs as another user)
  adminPort           port of /livez, /readyz, /metrics (default 9417; must be free in the pod)
  logFormat           plain | json (default json)
  logLevel            default info
  enableQuit          serve POST /quitquitquit (default false)
  caBundle            {configMap: NAME} or {secret: NAME}, with key (default ca.crt): extra PEM CAs (LS_CA_FILE)
  env                 map of extra environment variables, e.g. {LS_REFRESH_FRACTION: "0.5"}
  resources           container resources (default 10m/32Mi requests, 200m/64Mi limits)
  securityContext     container securityContext (default: non-root 65532, read-only root FS, no capabilities,
                      no privilege escalation, seccomp RuntimeDefault)
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

{{/* The config with defaults filled in, as YAML (hasKey keeps explicit false / "" values). */}}
{{- define "ls-token-refresher.sidecar.config" -}}
{{- $c := .config | default dict }}
{{- $mode := $c.mode | default "run" }}
{{- if not (has $mode (list "run" "once")) }}
{{- fail (printf "ls-token-refresher sidecar: mode must be run or once, not %q" $mode) }}
{{- end }}
{{- $pat := $c.patSecret | default dict }}
{{- $ca := $c.caBundle | default dict }}
{{- $native := true }}
{{- if hasKey $c "native" }}{{ $native = $c.native }}{{ end }}
{{- $enableQuit := false }}
{{- if hasKey $c "enableQuit" }}{{ $enableQuit = $c.enableQuit }}{{ end }}
url: {{ required "ls-token-refresher sidecar: config.url (Label Studio base URL) is required" $c.url | quote }}
patSecretName: {{ required "ls-token-refresher sidecar: config.patSecret.name is required" $pat.name | quote }}
patSecretKey: {{ $pat.key | default "pat" | quote }}
mode: {{ $mode }}
native: {{ and $native (eq $mode "run") }}
name: {{ $c.name | default (ternary "ls-token-refresher" "ls-token-refresher-init" (eq $mode "run")) | quote }}
image: {{ $c.image | default (include "ls-token-refresher.sidecar.defaultImage" .) | quote }}
imagePullPolicy: {{ $c.imagePullPolicy | default "IfNotPresent" }}
tokenDir: {{ $c.tokenDir | default "/var/run/secrets/label-studio" | quote }}
volumeName: {{ $c.volumeName | default "ls-token" | quote }}
fileMode: {{ $c.fileMode | default "0640" | toString | quote }}
adminPort: {{ $c.adminPort | default 9417 | int }}
logFormat: {{ $c.logFormat | default "json" | quote }}
logLevel: {{ $c.logLevel | default "info" | quote }}
enableQuit: {{ $enableQuit }}
caConfigMap: {{ $ca.configMap | default "" | quote }}
caSecret: {{ $ca.secret | default "" | quote }}
caKey: {{ $ca.key | default "ca.crt" | quote }}
env:
  {{- toYaml ($c.env | default dict) | nindent 2 }}
resources:
  {{- $c.resources | default (include "ls-token-refresher.sidecar.defaultResources" . | fromYaml) | toYaml | nindent 2 }}
securityContext:
  {{- $c.securityContext | default (include "ls-token-refresher.sidecar.defaultSecurityContext" . | fromYaml) | toYaml | nindent 2 }}
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
    - name: LS_PAT_FILE
      value: {{ printf "/etc/ls-token-refresher/pat/%s" $cfg.patSecretKey | quote }}
    - name: LS_TOKEN_DIR
      value: {{ $cfg.tokenDir | quote }}
    - name: LS_FILE_MODE
      value: {{ $cfg.fileMode | quote }}
    {{- if eq $cfg.mode "run" }}
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
  {{- if eq $cfg.mode "run" }}
  ports:
    - name: ls-admin
      containerPort: {{ $cfg.adminPort }}
      protocol: TCP
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
    - name: {{ $cfg.volumeName }}
      mountPath: {{ $cfg.tokenDir | quote }}
    - name: {{ printf "%s-pat" $cfg.volumeName }}
      mountPath: /etc/ls-token-refresher/pat
      readOnly: true
    {{- if or $cfg.caConfigMap $cfg.caSecret }}
    - name: {{ printf "%s-ca" $cfg.volumeName }}
      mountPath: /etc/ls-token-refresher/ca
      readOnly: true
    {{- end }}
{{- end }}

{{- define "ls-token-refresher.sidecar.volumes" -}}
{{- $cfg := include "ls-token-refresher.sidecar.config" . | fromYaml }}
{{- if hasKey $cfg "Error" }}{{ fail $cfg.Error }}{{ end -}}
# Token files live in memory only and are shared with the app as a whole directory (a subPath never updates).
- name: {{ $cfg.volumeName }}
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: {{ printf "%s-pat" $cfg.volumeName }}
  secret:
    secretName: {{ $cfg.patSecretName }}
    defaultMode: 0440
    items:
      - key: {{ $cfg.patSecretKey }}
        path: {{ $cfg.patSecretKey }}
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
- name: {{ $cfg.volumeName }}
  mountPath: {{ $cfg.tokenDir | quote }}
  readOnly: true
{{- end }}
