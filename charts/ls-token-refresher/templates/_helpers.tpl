{{/* vim: set filetype=mustache: */}}

{{- define "ls-token-refresher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ls-token-refresher.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ls-token-refresher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ls-token-refresher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ls-token-refresher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ls-token-refresher.labels" -}}
helm.sh/chart: {{ include "ls-token-refresher.chart" . }}
{{ include "ls-token-refresher.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: token-refresher
app.kubernetes.io/part-of: label-studio
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The common labels plus extra ones, each key once (the extra value wins): (list $ extraDict). A user may set
the same label in commonLabels and an object's own labels; YAML forbids the duplicate key. */}}
{{- define "ls-token-refresher.labelsWith" -}}
{{- $root := index . 0 }}
{{- $all := include "ls-token-refresher.labels" $root | fromYaml }}
{{- toYaml (merge (deepCopy (index . 1 | default dict)) $all) }}
{{- end }}

{{/* "  annotations:" block for metadata (already indented, with a leading newline) when there is anything to
write. Pass (list $ extraDict); call as {{- include "ls-token-refresher.annotations" (list . dict) }}. */}}
{{- define "ls-token-refresher.annotations" -}}
{{- $root := index . 0 }}
{{- $all := merge (deepCopy (index . 1 | default dict)) (deepCopy ($root.Values.commonAnnotations | default dict)) }}
{{- with $all }}
{{- printf "annotations:\n%s" (toYaml . | indent 2) | nindent 2 }}
{{- end }}
{{- end }}

{{- define "ls-token-refresher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ls-token-refresher.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ls-token-refresher.patSecretName" -}}
{{- if .Values.pat.existingSecret }}
{{- .Values.pat.existingSecret }}
{{- else }}
{{- printf "%s-pat" (include "ls-token-refresher.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "ls-token-refresher.targetSecretName" -}}
{{- default (printf "%s-token" (include "ls-token-refresher.fullname" . | trunc 57 | trimSuffix "-")) .Values.targetSecret.name }}
{{- end }}

{{/* The namespace of every namespaced object: namespaceOverride (external-secrets' and Bitnami's key), else the
release's. */}}
{{- define "ls-token-refresher.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The image: global.imageRegistry (cert-manager's and Bitnami's global registry) before image.registry. */}}
{{- define "ls-token-refresher.image" -}}
{{- $registry := .Values.image.registry }}
{{- with (.Values.global | default dict).imageRegistry }}
{{- $registry = . }}
{{- end }}
{{- $repo := .Values.image.repository }}
{{- if $registry }}
{{- $repo = printf "%s/%s" $registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Host port of labelStudio.url: the explicit port, else 443 for https and 80 for http.
*/}}
{{- define "ls-token-refresher.labelStudioPort" -}}
{{- $u := urlParse .Values.labelStudio.url }}
{{- $hostport := splitList ":" $u.host }}
{{- if gt (len $hostport) 1 }}
{{- last $hostport }}
{{- else if eq $u.scheme "https" }}
{{- 443 }}
{{- else }}
{{- 80 }}
{{- end }}
{{- end }}

{{/*
Seconds in a duration such as 90s, 5m, 1h30m, 14d or 2w (PromQL arithmetic needs plain numbers).
*/}}
{{- define "ls-token-refresher.seconds" -}}
{{- $total := 0 }}
{{- $units := dict "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800 }}
{{- $s := toString . }}
{{- if not (regexMatch "^([0-9]+[smhdw])+$" $s) }}
{{- fail (printf "%q is not a duration like 90s, 5m, 1h30m or 14d" $s) }}
{{- end }}
{{- range regexFindAll "[0-9]+[smhdw]" $s -1 }}
{{- $n := trimSuffix (substr (sub (len .) 1 | int) (len .) .) . | atoi }}
{{- $total = add $total (mul $n (get $units (substr (sub (len .) 1 | int) (len .) .))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
The pod's imagePullSecrets list items: global.imagePullSecrets, then imagePullSecrets, each once. Items are
{name: ...} objects (cert-manager's and external-secrets' form); plain strings, this chart's form before 0.2.0, are
still accepted. Empty when there are none.
*/}}
{{- define "ls-token-refresher.imagePullSecrets" -}}
{{- $names := list }}
{{- range concat ((.Values.global | default dict).imagePullSecrets | default list) (.Values.imagePullSecrets | default list) }}
{{- $n := "" }}
{{- if kindIs "string" . }}{{ $n = . }}{{ else if kindIs "map" . }}{{ $n = .name | default "" }}{{ end }}
{{- if and $n (not (has $n $names)) }}
{{- $names = append $names $n }}
{{- end }}
{{- end }}
{{- range $names }}
- name: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
"true" when the pinned UID/GID/fsGroup must go: global.compatibility.openshift.adaptSecurityContext is force, or auto
on a cluster that serves security.openshift.io/v1 (OpenShift). Its default restricted-v2 SCC assigns each namespace
a UID range and rejects pods that pin an ID outside it (external-secrets' switch, from Bitnami's common chart).
*/}}
{{- define "ls-token-refresher.openshift" -}}
{{- $mode := (((.Values.global | default dict).compatibility | default dict).openshift | default dict).adaptSecurityContext | default "auto" }}
{{- if or (eq $mode "force") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "security.openshift.io/v1")) }}
{{- true }}
{{- end }}
{{- end }}

{{/* A securityContext (dict "context" $ "sc" <map>) as YAML, without the pinned IDs when adapting to OpenShift. */}}
{{- define "ls-token-refresher.securityContext" -}}
{{- $sc := deepCopy (.sc | default dict) }}
{{- if include "ls-token-refresher.openshift" .context }}
{{- $sc = omit $sc "runAsUser" "runAsGroup" "fsGroup" "seLinuxOptions" }}
{{- end }}
{{- toYaml $sc }}
{{- end }}

{{/* A probe of the admin port (dict "probe" <probes.X>); the caller skips it when probe.enabled is false. */}}
{{- define "ls-token-refresher.probe" -}}
httpGet:
  path: {{ .probe.path }}
  port: admin
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
{{- end }}

{{/*
The environment `run` and `check` share (env list items): Label Studio, the PAT Secret, the target Secret, timing,
the CA bundle. The Deployment and the `helm test` pod both use it, so the test checks what the refresher runs with.
*/}}
{{- define "ls-token-refresher.sharedEnv" -}}
- name: LS_URL
  value: {{ .Values.labelStudio.url | quote }}
- name: LS_PAT_SECRET
  value: {{ include "ls-token-refresher.patSecretName" . | quote }}
- name: LS_PAT_SECRET_KEY
  value: {{ .Values.pat.key | quote }}
- name: LS_TARGET_SECRET
  value: {{ include "ls-token-refresher.targetSecretName" . | quote }}
{{- if .Values.targetSecret.force }}
- name: LS_TARGET_SECRET_FORCE
  value: "true"
{{- end }}
- name: LS_PROPAGATION_MARGIN
  value: {{ .Values.targetSecret.propagationMargin | quote }}
{{ include "ls-token-refresher.timingEnv" . }}
- name: LS_LEGACY_RECHECK
  value: {{ .Values.timing.legacyRecheck | quote }}
{{- if .Values.labelStudio.noValidate }}
- name: LS_NO_VALIDATE
  value: "true"
{{- else }}
- name: LS_VALIDATE_PATH
  value: {{ .Values.labelStudio.validatePath | quote }}
{{- end }}
{{- if or .Values.labelStudio.caBundle.configMap .Values.labelStudio.caBundle.secret }}
- name: LS_CA_FILE
  value: {{ printf "/etc/ls-token-refresher/ca/%s" .Values.labelStudio.caBundle.key | quote }}
{{- end }}
{{- end }}

{{/* The CA bundle volume (list item), when one is configured. */}}
{{- define "ls-token-refresher.caVolume" -}}
{{- if .Values.labelStudio.caBundle.configMap }}
- name: ca-bundle
  configMap:
    name: {{ .Values.labelStudio.caBundle.configMap }}
    items:
      - key: {{ .Values.labelStudio.caBundle.key }}
        path: {{ .Values.labelStudio.caBundle.key }}
{{- else if .Values.labelStudio.caBundle.secret }}
- name: ca-bundle
  secret:
    secretName: {{ .Values.labelStudio.caBundle.secret }}
    defaultMode: 0444
    items:
      - key: {{ .Values.labelStudio.caBundle.key }}
        path: {{ .Values.labelStudio.caBundle.key }}
{{- end }}
{{- end }}

{{/* Scheduling of the chart's pods (pod spec keys): node selector, tolerations, affinity, spread. */}}
{{- define "ls-token-refresher.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The refresh timing (env list items), shared by `run`, `check` and the controller (its per-token defaults). */}}
{{- define "ls-token-refresher.timingEnv" -}}
- name: LS_REFRESH_FRACTION
  value: {{ .Values.timing.refreshFraction | toString | quote }}
- name: LS_MIN_LEAD
  value: {{ .Values.timing.minLead | quote }}
- name: LS_JITTER
  value: {{ .Values.timing.jitter | quote }}
- name: LS_BACKOFF_INITIAL
  value: {{ .Values.timing.backoffInitial | quote }}
- name: LS_BACKOFF_MAX
  value: {{ .Values.timing.backoffMax | quote }}
- name: LS_REQUEST_TIMEOUT
  value: {{ .Values.timing.requestTimeout | quote }}
- name: LS_CONNECT_TIMEOUT
  value: {{ .Values.timing.connectTimeout | quote }}
{{- end }}

{{- define "ls-token-refresher.controllerName" -}}
{{- printf "%s-controller" (include "ls-token-refresher.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{/* The controller's pods: a name of their own, so the `run` Deployment's selector (name + instance, immutable)
never matches them. */}}
{{- define "ls-token-refresher.controllerSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-controller" (include "ls-token-refresher.name" . | trunc 52 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The chart's labels for the controller's objects. */}}
{{- define "ls-token-refresher.controllerLabels" -}}
{{- $extra := include "ls-token-refresher.controllerSelectorLabels" . | fromYaml }}
{{- $_ := set $extra "app.kubernetes.io/component" "controller" }}
{{- include "ls-token-refresher.labelsWith" (list . $extra) }}
{{- end }}

{{/* The controller's rules in a served namespace (a Role per namespace, or one ClusterRole). */}}
{{- define "ls-token-refresher.controllerRules" -}}
- apiGroups: ["ls-token-refresher.io"]
  resources: ["labelstudiotokens"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["ls-token-refresher.io"]
  resources: ["labelstudiotokens/status"]
  verbs: ["patch"]
# PAT Secrets (label-selected watch; patch of the PAT key when a token resource asks for rotation) and target Secrets
# (metadata watch, create, patch with a uid precondition).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Affinity and topology spread of a workload's pods (pod spec keys): (list $ replicas selectorLabelsYaml). With
`deployment.spreadOverNodes` and more than one replica, and no user `affinity` / `topologySpreadConstraints`: replicas on
different nodes when possible (preferred: a one-node cluster still runs them all).
*/}}
{{- define "ls-token-refresher.spreadOverNodes" -}}
{{- $root := index . 0 }}
{{- $selector := index . 2 }}
{{- $spread := and $root.Values.deployment.spreadOverNodes (gt (int (index . 1)) 1) }}
{{- if and $spread (not $root.Values.affinity) }}
# Replicas on different nodes when possible (preferred: a one-node cluster still runs them all).
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- $selector | nindent 14 }}
{{- end }}
{{- if $root.Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml $root.Values.topologySpreadConstraints | nindent 2 }}
{{- else if $spread }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- $selector | nindent 8 }}
{{- end }}
{{- end }}

{{/* Leader-election environment (env list items) for the Lease named by the argument: (list $ leaseName). */}}
{{- define "ls-token-refresher.leaderEnv" -}}
{{- $root := index . 0 }}
{{- with $root.Values.leaderElection }}
{{- if .enabled }}
- name: LS_LEADER_ELECT
  value: "true"
- name: LS_LEASE_NAME
  value: {{ index $ 1 | quote }}
- name: LS_LEASE_DURATION
  value: {{ .leaseDuration | quote }}
- name: LS_LEASE_RENEW_DEADLINE
  value: {{ .renewDeadline | quote }}
- name: LS_LEASE_RETRY_PERIOD
  value: {{ .retryPeriod | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"true" when PAT rotation is on: pat.rotation.every and/or pat.rotation.beforeExpiry set (both empty = off, the
default). Fails the render when the chart itself manages the PAT Secret (pat.create): the next `helm upgrade` would
write the value from the values file, by then the old and revoked PAT, back over the rotated one. Also fails on a
duration the refresher would refuse at start (zero, or beyond its one-year limit), rather than ship a crash loop.
*/}}
{{- define "ls-token-refresher.patRotation" -}}
{{- $r := .Values.pat.rotation | default dict }}
{{- if or $r.every $r.beforeExpiry }}
{{- if .Values.pat.create }}
{{- fail "pat.rotation needs a PAT Secret the chart does not manage (pat.create is true: the next helm upgrade would put the old, revoked PAT back): create the Secret yourself, set pat.existingSecret and pat.create=false" }}
{{- end }}
{{- range $key := list "every" "beforeExpiry" }}
{{- with get $r $key }}
{{- $s := include "ls-token-refresher.seconds" . | int }}
{{- if or (le $s 0) (gt $s 31536000) }}
{{- fail (printf "pat.rotation.%s (%s) must be longer than 0 and at most 365d" $key .) }}
{{- end }}
{{- end }}
{{- end }}
{{- true }}
{{- end }}
{{- end }}

{{/* The rotation environment of the `run` container (env list items); empty with rotation off. */}}
{{- define "ls-token-refresher.rotationEnv" -}}
{{- if include "ls-token-refresher.patRotation" . }}
{{- with .Values.pat.rotation.every }}
- name: LS_ROTATE_PAT_EVERY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.pat.rotation.beforeExpiry }}
- name: LS_ROTATE_PAT_BEFORE_EXPIRY
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
