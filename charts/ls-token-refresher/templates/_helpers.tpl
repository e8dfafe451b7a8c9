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

{{- define "ls-token-refresher.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository }}
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
